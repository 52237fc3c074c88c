"""Memory and speed of a large resumable upload: the server's RSS while a 1 GiB file
arrives in parts, is sealed chunk by chunk, and is stored (database backend by default).

The client generates the file on the fly (no 1 GiB buffer on either side) and sends it
with the official SDK's ``uploads.part`` in ``--part-mib`` parts. The server's RSS is
sampled from /proc every 50 ms; printed: RSS before the upload (after a 1 MiB warm-up
upload, the named baseline), the peak during it, and the growth (target: < 100 MB),
plus the throughput of parts and of the completion pass (hashing the stored file), and
the download's throughput and RSS peak.

    python bench/uploads.py [--gib 1] [--part-mib 64] [--backend database]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _server import start_llamahost
from llama_api_client import LlamaAPIClient

MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.05)

    def stop(self) -> int:
        self.running = False
        self.join()
        return self.peak


def block(index: int, size: int) -> bytes:
    """Deterministic, incompressible-looking bytes: a part can be regenerated, not stored."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--part-mib", type=int, default=64)
    args = parser.parse_args()
    total = int(args.gib * 1024 * MiB)
    part = args.part_mib * MiB
    config = f"[files]\nmax_part_bytes = {part}\nmax_bytes = {max(total, 1024 * MiB)}\n"
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_llamahost(Path(tmp) / "data", config)
        try:
            client = LlamaAPIClient(api_key=key, base_url=f"{url}/v1", max_retries=0, timeout=600)
            warm = client.uploads.create(bytes=MiB, filename="warm.bin", mime_type="application/pdf", purpose="attachment")
            client.uploads.part(warm.id, data=("p", block(0, MiB)), x_upload_offset=0)
            baseline = rss_bytes(proc.pid)
            sampler = Sampler(proc.pid)
            sampler.start()
            session = client.uploads.create(bytes=total, filename="big.bin", mime_type="application/pdf", purpose="attachment")
            digest = hashlib.sha256()
            offset, index, started = 0, 0, time.perf_counter()
            last = None
            while offset < total:
                data = block(index, min(part, total - offset))
                digest.update(data)
                if offset + len(data) == total:
                    parts_done = time.perf_counter()
                last = client.uploads.part(session.id, data=("p", data), x_upload_offset=offset)
                offset, index = last.offset, index + 1
            finished = time.perf_counter()
            peak = sampler.stop()
            print(f"upload of {total / MiB:.0f} MiB in {args.part_mib} MiB parts (database backend, SQLite)")
            print(f"  server RSS: baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
                  f"growth {(peak - baseline) / MiB:.1f} MiB ({(peak - baseline) / 1e6:.1f} MB; target < 100 MB)")
            print(f"  wall time {finished - started:.1f} s ({total / MiB / (finished - started):.0f} MiB/s), "
                  f"the last part incl. the completion pass (sha256 of the stored file) {finished - parts_done:.1f} s")
            sampler = Sampler(proc.pid)
            sampler.start()
            check = hashlib.sha256()
            started = time.perf_counter()
            with httpx.stream("GET", f"{url}/v1/files/{last.file_id}/content", headers={"Authorization": f"Bearer {key}"},
                              timeout=600) as response:
                for chunk in response.iter_bytes():
                    check.update(chunk)
            elapsed = time.perf_counter() - started
            peak = sampler.stop()
            assert check.hexdigest() == digest.hexdigest(), "the download differs from the upload"
            print(f"  download: {total / MiB / elapsed:.0f} MiB/s, server RSS peak {peak / MiB:.1f} MiB "
                  f"(growth over the baseline {(peak - baseline) / 1e6:.1f} MB); sha256 matches")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
