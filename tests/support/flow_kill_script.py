"""Run the label-dataset flow, then die hard in the middle of it (used by test_flow_label_dataset.py).

    python flow_kill_script.py SOURCE OUTPUT PARAMS_JSON KILL_AT

The store's writer is wrapped so that the process calls ``os._exit`` right before the KILL_AT-th images part
(the commit record) is written: that batch's annotations part is on storage, its images row is not. No
cleanup handler, no ``finally`` runs, as with a killed worker or a lost machine.
"""

from __future__ import annotations

import json
import os
import sys
import threading

KILLED_EXIT_CODE = 75


def main() -> int:
    source, output, params_json, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    import maskclip_core.dataset.parts as parts_module

    real_write = parts_module.atomic_write_bytes
    lock = threading.Lock()
    images_parts = [0]

    def write(url: str, data: bytes, storage_options=None) -> None:
        if "/images/part-" in url:
            with lock:
                images_parts[0] += 1
                if images_parts[0] == kill_at:
                    os._exit(KILLED_EXIT_CODE)
        real_write(url, data, storage_options)

    parts_module.atomic_write_bytes = write

    from flows.label_dataset import label_dataset

    label_dataset(source, output, **json.loads(params_json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
