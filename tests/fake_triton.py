"""A stand-in for Triton Inference Server, which cannot run here (no container runtime, no GPU).

It implements just the KServe v2 HTTP calls our ``triton`` runtime makes — repository load, model
ready, infer with the binary tensor extension — and runs the repository's ``1/model.onnx`` with a
real ONNX Runtime session. What it proves: our client side (repository publishing, load calls,
tensor names, dtypes, binary encoding, dynamic batch) matches the protocol; not Triton itself.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort

_DTYPES = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}
_NAMES = {np.dtype(v).name: k for k, v in _DTYPES.items()}


class FakeTriton:
    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.infer_calls = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeTriton:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"{}", header_len: int | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if header_len is None
                                 else "application/octet-stream")
                if header_len is not None:
                    self.send_header("Inference-Header-Content-Length", str(header_len))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["v2", "models"] and parts[-1] == "ready":
                    self._reply(200 if parts[2] in fake.sessions else 400)
                else:
                    self._reply(200 if self.path.startswith("/v2/health") else 404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.strip("/").split("/")
                if parts[:3] == ["v2", "repository", "models"] and parts[-1] == "load":
                    onnx_path = fake.repository / parts[3] / "1" / "model.onnx"
                    if not onnx_path.is_file():
                        self._reply(400, json.dumps({"error": f"no model {parts[3]}"}).encode())
                        return
                    fake.sessions[parts[3]] = ort.InferenceSession(str(onnx_path))
                    self._reply(200)
                elif parts[:2] == ["v2", "models"] and parts[-1] == "infer":
                    self._infer(parts[2], body)
                else:
                    self._reply(404)

            def _infer(self, name: str, body: bytes) -> None:
                if name not in fake.sessions:
                    self._reply(400, json.dumps({"error": f"model {name} not loaded"}).encode())
                    return
                n = int(self.headers.get("Inference-Header-Content-Length", len(body)))
                header, offset = json.loads(body[:n]), n
                feed = {}
                for t in header["inputs"]:
                    dtype = _DTYPES[t["datatype"]]
                    size = t["parameters"]["binary_data_size"]
                    feed[t["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(t["shape"])
                    offset += size
                outputs = fake.sessions[name].run(None, feed)
                fake.infer_calls += 1
                out_meta, blobs = [], []
                for meta, arr in zip(fake.sessions[name].get_outputs(), outputs, strict=True):
                    data = np.ascontiguousarray(arr).tobytes()
                    out_meta.append({"name": meta.name, "datatype": _NAMES[arr.dtype.name], "shape": list(arr.shape),
                                     "parameters": {"binary_data_size": len(data)}})
                    blobs.append(data)
                head = json.dumps({"model_name": name, "outputs": out_meta}).encode()
                self._reply(200, head + b"".join(blobs), header_len=len(head))

        return Handler
