"""The serving stack side by side with LitServe and Ray Serve: same graphs, same machine, same run (issue 16).

    python -m benchmarks.peers                  # tiny, 3 rounds alternating between the systems
    python -m benchmarks.peers --size base
    python -m benchmarks.peers --quick          # 1 round, a few requests per system (the test's mode)

Every system serves the same exported ONNX graphs (the TreeSatAI configuration: aerial 300 px + s2 + s1-asc, patch
20 m, tile; for mixed traffic also s2 + s1-asc at 20 m and aerial + s2 at 30 m) with the same ONNX Runtime session
options and thread count, the same max batch size and wait, the same requests (cut from the real TreeSatAI tile,
random date counts). anysat-serve is ``anysat serve`` (gateway + Redis + one worker) called through
``AnySatClient``; LitServe and Ray Serve (``pip install -e '.[bench]'``; skipped with the reason when absent) get
the JSON with base64 .npy arrays their users would post. The raw forward at the same batch size is the ceiling.
Measured in rounds alternating between the systems: throughput at saturation (32 callers), p50/p95/p99 at 1, 8
and 32 callers, the added p50 at 1 caller over the raw forward just before each request, mixed traffic (3
configurations interleaved, 32 callers: throughput and mean forward batch) and the process trees' memory. Prints
the table with ours ÷ best peer and writes the raw numbers as JSON (``--out``). docs/peers.md has the method.
"""
