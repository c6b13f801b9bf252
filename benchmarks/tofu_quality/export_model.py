"""Convert the shared SmolLM2-135M-Instruct GGUF into an ordinary HF folder (fp32) loadable by
transformers 4.45.1 (the host's pin), which reads the same rope_theta (checked: same logits,
docs/real_lm.md). Run with transformers >= 4.57 (4.45.1 de-quantises GGUF wrongly, see the model's
PROVENANCE.md). The chat template is copied into tokenizer_config.json because 4.45.1
does not read chat_template.jinja. Writes atomically (tmp dir + rename)."""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

src, dst = sys.argv[1], sys.argv[2]
if os.path.exists(os.path.join(dst, "config.json")):
    print(f"exists: {dst}")
    sys.exit(0)
tmp = dst + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
gguf = [f for f in os.listdir(src) if f.endswith(".gguf")][0]
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
model.hf_quantizer = None
model.is_quantized = False
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(tmp)
# transformers 5.x writes rope_theta only inside rope_parameters, which 4.45.1 ignores (it would use
# 10000 instead of SmolLM2's 100000): write it at the top level too (one home: benchmarks/real_lm/common.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.real_lm.common import write_portable_config  # noqa: E402

write_portable_config(Path(tmp))
# the shared folder's tokenizer files (tokenizer_class PreTrainedTokenizerFast loads in 4.x and 5.x;
# a 5.x save_pretrained would write TokenizersBackend, unknown to 4.45.1)
for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(os.path.join(src, f), os.path.join(tmp, f))
with open(os.path.join(src, "chat_template.jinja")) as handle:
    template = handle.read()
p = os.path.join(tmp, "tokenizer_config.json")
with open(p) as handle:
    cfg = json.load(handle)
cfg["chat_template"] = template  # 4.45.1 reads the template only from here
cfg["model_input_names"] = ["input_ids", "attention_mask"]
with open(p, "w") as handle:
    json.dump(cfg, handle, indent=2)
os.rename(tmp, dst)
print(f"wrote {dst}")
