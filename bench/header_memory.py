"""What concurrent requests of DICOM files with very many tiny header elements cost the service's memory.

Starts `brain-tumor serve` on the committed models (`bench.http_load.ready_service`), then sends `--requests`
POST /v1/predict/batch at once, each of `--files` one-slice 64x64 MR files padded with `--elements` empty private
elements (an attack review used 99,000: about 0.8 MB of file and, parsed, tens of MB of memory each). Prints each
answer's status and error code, and the server's resident memory before and at its peak (Linux /proc).

    python -m bench.header_memory --requests 4 --files 5 --elements 99000

Each request's headers alone stay under the default `DECODE_MEMORY_BYTES` when `--files` x `--elements` x 400 bytes
is under 512 MiB, so that what is measured is several requests together, not one refused on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path

import aiohttp

from bench.http_load import ready_service
from bench.measurements import DEFAULT_MODEL_DIR, emit_summary, machine_description, process_memory


def padded_files(count: int, elements: int) -> list[bytes]:
    """`count` files of one series, each with `elements` empty private elements in its header (0xF000 to a group,
    then the next odd group)."""
    import numpy as np
    from pydicom.uid import generate_uid

    from tests.dicom.builders import Study, mr_dataset, to_bytes

    study, series_uid, rng = Study(), generate_uid(), np.random.default_rng(0)
    files = []
    for index in range(count):
        image = rng.integers(0, 1000, size=(64, 64), dtype=np.uint16)
        dataset = mr_dataset(image, study, series_uid, instance_number=index + 1, position_mm=5.0 * index)
        for element in range(elements):
            group, number = divmod(element, 0xF000)
            dataset.add_new((0x0009 + 2 * group, 0x1000 + number), "UN", b"")
        files.append(to_bytes(dataset))
    return files


async def send_together(base_url: str, requests: int, files: list[bytes]) -> list[tuple[int, str]]:
    """Post the same files as `requests` batches at once; each answer's status and error code ("" for 200)."""

    async def one(client: aiohttp.ClientSession) -> tuple[int, str]:
        form = aiohttp.FormData()
        for index, data in enumerate(files):
            form.add_field("files", data, filename=f"{index}.dcm", content_type="application/dicom")
        async with client.post(f"{base_url}/v1/predict/batch", data=form) as response:
            body = await response.json(content_type=None)
            return response.status, "" if response.status == 200 else body.get("error", {}).get("code", "")

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        return await asyncio.gather(*(one(client) for _ in range(requests)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--elements", type=int, default=99_000)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    files = padded_files(args.files, args.elements)
    with tempfile.TemporaryDirectory() as folder, ready_service(args.model_dir, Path(folder) / "server.log") as server:
        pid = server.process.pid
        before = process_memory(pid)
        answers = asyncio.run(send_together(server.base_url, args.requests, files))
        after = process_memory(pid)
    summary = {
        "benchmark": "header_memory",
        "requests": args.requests,
        "files_per_request": args.files,
        "empty_elements_per_file": args.elements,
        "request_mb": round(sum(len(data) for data in files) / 1e6, 1),
        "answers": dict(Counter(f"{status} {code}".strip() for status, code in answers)),
        "rss_before_mib": before and before["rss_mib"],
        "peak_rss_mib": after and after["peak_rss_mib"],
        "peak_growth_mib": before and after and round(after["peak_rss_mib"] - before["rss_mib"], 1),
        "machine": machine_description(),
        "pid": os.getpid(),
    }
    emit_summary(summary, args.json_out)


if __name__ == "__main__":
    main()
