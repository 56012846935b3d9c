"""Dictionary file layouts, one module each: how to recognise, read and (where it can) write it.

Each module defines a `sae.io.Format`; they are registered here in detection order (a path is read as the
first layout that claims it: the layouts that need several files first, the lone .pt file last).
"""

from sae.formats import circuit_tracer, dictlearning, gemmascope, llamascope, openai, saekit, sparsify
from sae.formats.circuit_tracer import load_transcoder_set, save_transcoder_set
from sae.io import Format, register_format

register_format(saekit.FORMAT)
register_format(saekit.STRICT)
register_format(sparsify.FORMAT)
register_format(circuit_tracer.FORMAT)
register_format(circuit_tracer.CLT_LAYER)
register_format(gemmascope.TRANSCODER_FORMAT)
register_format(gemmascope.FORMAT)
register_format(gemmascope.FORMAT_2)
register_format(gemmascope.CLT_FORMAT_2)
register_format(llamascope.FORMAT)
register_format(dictlearning.FORMAT)
register_format(openai.FORMAT)

__all__ = ["Format", "load_transcoder_set", "register_format", "save_transcoder_set"]
