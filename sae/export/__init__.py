"""Exports of a run's feature data to other tools' layouts: `python -m sae export RUN --format neuronpedia|saedashboard`.

`load_run` reads what `python -m sae dashboard` (and `explain`) wrote; `write_neuronpedia` / `write_saedashboard`
write each layout, every record checked against `schema.SCHEMAS`; `NOT_REPRESENTED` says what does not carry over.
"""

from sae.export.neuronpedia import write_neuronpedia
from sae.export.records import NOT_REPRESENTED, ExportRun, load_run
from sae.export.saedashboard import write_saedashboard
from sae.export.schema import SCHEMAS, check_record

__all__ = ["NOT_REPRESENTED", "SCHEMAS", "ExportRun", "check_record", "load_run", "write_neuronpedia", "write_saedashboard"]
