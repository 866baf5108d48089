"""PaddlePaddle pipeline for the Fashion-MNIST image-classification contest."""
import os
import warnings

# Paddle warns about a missing ccache (only relevant when compiling custom ops)
# and its C++ side logs through glog; silence both before any module imports paddle.
warnings.filterwarnings("ignore", message="No ccache found")
# BatchNorm2D says this on every training forward pass; it is not actionable.
warnings.filterwarnings("ignore", message="When training, we now always track global mean")
os.environ.setdefault("GLOG_minloglevel", "2")

__version__ = "0.1.0"
