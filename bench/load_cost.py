"""Seconds to load a run's checkpoint for generation, with and without the weights' range check."""
import json, sys, time
import mlx.core as mx
from core import config
from core.generate import decode
cfg = config.load(sys.argv[1])
real = decode.check_range
out = []
for rnd in range(3):
    for checked in (True, False):
        decode.check_range = real if checked else (lambda *a, **k: None)
        mx.synchronize(); t = time.perf_counter()
        lm = decode.load_model(cfg)
        mx.synchronize(); out.append({"round": rnd, "checked": checked, "s": round(time.perf_counter() - t, 4)})
t = time.perf_counter(); big = decode.largest_weight(lm.model.parameters()); out.append({"largest_weight_s": round(time.perf_counter() - t, 4), "largest": big, "preset": lm.model.shape.name, "device": str(mx.default_device())})
print(json.dumps(out))
