"""``spectroflow prep``: the frame-classification dataset vak 1.1.0's ``vak prep`` makes from
audio, with vak's algorithms (:mod:`.labels`, :mod:`.split`) and spectroflow's spectrograms
(:mod:`.dataset`). No Prefect, no vak."""

from .dataset import PrepError, PrepRequest, PrepResult, prep

__all__ = ["PrepError", "PrepRequest", "PrepResult", "prep"]
