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

# The notebook API (competition/api.py), imported on first use so that `import competition.report`
# and the command line's start-up do not load the training code they don't need.
_API = ("Config", "fit", "resume", "submit", "view_report", "RunResult", "Submission", "Report")


def __getattr__(name: str):
    if name in _API:
        from . import api
        return api.Config if name == "Config" else getattr(api, name)
    raise AttributeError(f"module 'competition' has no attribute {name!r}")
