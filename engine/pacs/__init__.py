"""PACS over DICOMweb: profiles, search (QIDO-RS), resumable pulls into the cache (WADO-RS), results back (STOW-RS).

* ``profiles``: named PACS in the user's config folder; secrets from the environment or the OS keyring.
* ``client``: a ``dicomweb_client`` session whose failures are ``errors.PacsError`` kinds with one-line messages.
* ``query``: studies and series, technical fields only (never patient names); picking the image series.
* ``cache``: ``<cache>/pacs/<study UID>/<series UID>/<SOP UID>.dcm``, each image written atomically.
* ``spec``: ``pacs:[NAME:]STUDY[/SERIES]`` wherever a SPEC is read (``engine.io.spec``).
* ``push``: SEG, Parametric Map and Comprehensive 3D SR of a result (highdicom), stable UIDs, no duplicates.
* ``worklist``: the few calls a viewer's "Open from PACS…" dialog needs.

Submodules are imported on use: ``requests``, ``dicomweb_client`` and highdicom load only when a PACS is used.
"""
