"""Relearning attack and a cheap forget-set probe, with the host's metric definitions.

  relearn.py probe  MODEL_DIR TOFU_DIR OUT.json            forget01: answer prob + ROUGE-L recall
  relearn.py attack RUN_DIR   TOFU_DIR OUT.json --steps N --lr LR
      RUN_DIR is a host unlearning output dir (the saved unlearned model). Fine-tune it with AdamW on
      relearn_train (even rows of forget01, 20 QA) for N full-batch steps, and measure answer
      probability and ROUGE-L recall on relearn_test (odd rows, 20 QA) before and after.

Formatting = the host's (src/data/utils.py, apply_chat_template=True, system prompt "You are a helpful
assistant.", eos appended); probability = exp(-mean token NLL over answer tokens) as in the host's
`probability` metric; ROUGE = rougeL recall (rouge_score, stemmer) of a greedy generation, as in the
host's `rouge` metric (generation cut at eos). Writes OUT atomically.
"""
import argparse
import json
import os
import time

import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

SYSTEM = "You are a helpful assistant."


def rows(tofu, name):
    with open(os.path.join(tofu, name + ".json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def encode(tok, q, a):
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
    prompt = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": a}], tokenize=True)
    if full[-1] != tok.eos_token_id:
        full = full + [tok.eos_token_id]
    return prompt, full


def batch_lm(tok, data):
    enc = [encode(tok, r["question"], r["answer"]) for r in data]
    L = max(len(f) for _, f in enc)
    ids = torch.full((len(enc), L), tok.pad_token_id)
    lab = torch.full((len(enc), L), -100)
    att = torch.zeros((len(enc), L), dtype=torch.long)
    for i, (p, f) in enumerate(enc):  # right padding, like the host's training collator
        ids[i, :len(f)] = torch.tensor(f)
        att[i, :len(f)] = 1
        lab[i, len(p):len(f)] = torch.tensor(f[len(p):])
    return ids, att, lab


@torch.no_grad()
def measure(model, tok, data, max_new_tokens):
    model.eval()
    ids, att, lab = batch_lm(tok, data)
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    tgt = lab[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none").sum(1)
    probs = torch.exp(-nll / (tgt != -100).sum(1)).tolist()
    # greedy generation, left padded prompts
    prompts = [encode(tok, r["question"], r["answer"])[0] for r in data]
    P = max(len(p) for p in prompts)
    pid = torch.full((len(prompts), P), tok.pad_token_id)
    patt = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        pid[i, P - len(p):] = torch.tensor(p)
        patt[i, P - len(p):] = 1
    out = model.generate(input_ids=pid, attention_mask=patt, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    gens = tok.batch_decode(out[:, P:], skip_special_tokens=True)
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [sc.score(r["answer"], g)["rougeL"].recall for r, g in zip(data, gens, strict=True)]
    return {"prob": sum(probs) / len(probs), "rougeL_recall": sum(rouge) / len(rouge),
            "probs": probs, "rouge": rouge, "generations": gens[:5]}


def load(path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    return model, tok


def write(obj, out):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["probe", "attack"])
    ap.add_argument("model")
    ap.add_argument("tofu")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model, tok = load(a.model)
    if a.mode == "probe":
        write({"model": a.model, "forget01": measure(model, tok, rows(a.tofu, "forget01"), a.max_new_tokens)}, a.out)
        return
    train, test = rows(a.tofu, "relearn_train"), rows(a.tofu, "relearn_test")
    t0 = time.time()
    before = measure(model, tok, test, a.max_new_tokens)
    ids, att, lab = batch_lm(tok, train)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    losses = []
    for _ in range(a.steps):
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    after = measure(model, tok, test, a.max_new_tokens)
    write({"model": a.model, "steps": a.steps, "lr": a.lr, "train_rows": len(train), "test_rows": len(test),
           "train_losses": losses, "before": before, "after": after, "seconds": time.time() - t0}, a.out)
    print(json.dumps({"before": [before["prob"], before["rougeL_recall"]], "after": [after["prob"], after["rougeL_recall"]]}))


if __name__ == "__main__":
    main()
