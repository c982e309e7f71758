"""diffusers exposes its classes through lazy modules that import them by name at first use.

The invdetect detector needs only the 2-D UNet and the DDIM schedulers: name those modules, and leave
the pipelines out (most of diffusers' size, and they would pull transformers and more).
"""

hiddenimports = [
    "diffusers.models",
    "diffusers.models.unets",
    "diffusers.models.unets.unet_2d",
    "diffusers.schedulers",
    "diffusers.schedulers.scheduling_ddim",
    "diffusers.schedulers.scheduling_ddim_inverse",
]
excludedimports = ["diffusers.pipelines", "transformers", "flax", "jax", "onnxruntime"]
