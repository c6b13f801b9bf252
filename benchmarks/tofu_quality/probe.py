"""Cheap forget-set probe for benchmarks/tofu_quality.sh: did fine-tuning teach the model the facts?

  probe.py MODEL_DIR QA_FILE OUT.json [--max-new-tokens N]

Answer probability and ROUGE-L recall of MODEL_DIR on QA_FILE (TOFU's forget01), with the metrics of
``falcon-unlearn attack`` (``falcon_plugin.tools.attacks.metrics``, the host's definitions: exp of
minus the mean answer-token NLL; ROUGE-L recall of greedy answers) and its chat formatting (the
tokenizer's template with the host's system prompt). Writes OUT.json atomically:
``{"model", "data", "forget01": {"prob", "rougeL_recall"}}``.
"""

import argparse

from falcon_plugin.atomic import atomic_write_json
from falcon_plugin.tools.attacks.data import read_records, resolve_template
from falcon_plugin.tools.attacks.metrics import evaluate_part
from falcon_plugin.tools.common.hf import load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--template", default="chat", help="chat (the host's formatting; default) or plain")
    args = parser.parse_args()
    part = read_records(args.data, "qa")
    tokenizer, model = load_causal_lm(args.model)
    metrics = evaluate_part(
        model,
        tokenizer,
        part,
        resolve_template(tokenizer, args.template),
        args.max_length,
        args.max_new_tokens,
    )
    atomic_write_json(args.out, {"model": args.model, "data": args.data, "forget01": metrics})
    print(metrics)


if __name__ == "__main__":
    main()
