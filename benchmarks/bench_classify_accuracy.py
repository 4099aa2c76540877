"""Classification accuracy on the zoo of real modules (tests/_fixtures_zoo.py), against named_parameters/buffers.

    python benchmarks/bench_classify_accuracy.py [--files] [--hf]

Per zoo member and optimizer: kind accuracy and trainable accuracy (``unknown`` counts as a miss) without the
model, and with it. With ``--files`` each case is saved by ``torch.save`` and listed by the real reader instead of
built as records in memory. With ``--hf`` (transformers installed), also the Hugging Face folders of
tests/_fixtures_hf.py (tiny configs, ``save_pretrained``): by the rules alone (as without transformers) and by
``classify`` (the model built from config.json); truth from the model, names mapped as ``save_pretrained`` saves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _fixtures_zoo import OPTIMIZERS, ZOO, build, group_from_module, optimizer_record, train_one_step, truth  # noqa: E402

from ckptboard.core.classify import classify_tensors  # noqa: E402


def score(groups, truth_map) -> tuple[int, int, int]:
    """(tensors, kind hits, trainable hits) for the first group."""
    infos = groups[0].tensors
    kind = sum(truth_map[i.raw_name][0] == i.kind for i in infos)
    trainable = sum(truth_map[i.raw_name][1] == i.trainable for i in infos)
    return len(infos), kind, trainable


def case(name: str, opt_name: str, with_model: bool, files: Path | None):
    """Classify one zoo member saved with one optimizer; return (tensors, kind hits, trainable hits)."""
    model = build(name)
    make_opt = OPTIMIZERS[opt_name]
    opt = train_one_step(model, make_opt) if make_opt else None
    if files is None:
        groups = [group_from_module(model, "model")]
        optimizers = [optimizer_record(opt.state_dict())] if opt else []
    else:
        from ckptboard.core.reader import open_checkpoint

        path = files / f"{name}-{opt_name}.pt"
        torch.save({"model": model.state_dict(), **({"optimizer": opt.state_dict()} if opt else {})}, path)
        ckpt = open_checkpoint(path)
        groups, optimizers = ckpt.groups, ckpt.optimizers
    classify_tensors(groups, optimizers, model if with_model else None)
    return score(groups, truth(model))


def hf_cases(tmp: Path) -> None:
    """Every HF zoo folder: rules only vs ``classify`` (config.json), kind and trainable accuracy."""
    import warnings

    import transformers

    from _fixtures_hf import HF_ZOO, hf_truth, save_hf

    from ckptboard.core.classify import classify
    from ckptboard.core.reader import open_checkpoint

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    totals = {"rules": [0, 0, 0], "classify": [0, 0, 0]}
    print(f"\n{'HF folder':14} {'n':>4}  {'rules: kind':>11} {'train':>6}  | {'classify: kind':>14} {'train':>6}  source")
    for name in HF_ZOO:
        truth = hf_truth(save_hf(name, tmp / name))
        row = []
        for label in totals:
            with open_checkpoint(tmp / name) as ckpt:
                if label == "rules":
                    classify_tensors(ckpt.groups, ckpt.optimizers)
                    source = ""
                else:
                    result = classify(ckpt)
                    source = getattr(result, "model_source", None) or "rules"
                infos = ckpt.tensors
                n = len(infos)
                k = sum(truth[i.name][0] == i.kind for i in infos)
                t = sum(truth[i.name][1] == i.trainable for i in infos)
            for j, v in enumerate((n, k, t)):
                totals[label][j] += v
            row.append(f"{k / n:11.1%} {t / n:6.1%}")
        print(f"{name:14} {n:>4}  {row[0]}  | {row[1]:>21}  {source.split(' (')[0]}")
    for label, (n, k, t) in totals.items():
        print(f"TOTAL HF {label:9} tensors={n} kind={k / n:.1%} ({k}/{n}) trainable={t / n:.1%} ({t}/{n})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", action="store_true", help="round-trip through torch.save and the reader")
    parser.add_argument("--hf", action="store_true", help="also the Hugging Face folders built from tiny configs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) if args.files else None
        totals = {False: [0, 0, 0], True: [0, 0, 0]}
        print(f"{'zoo member':34} {'optimizer':18} {'n':>3}  {'kind':>6} {'train':>6}  | with model")
        for name in ZOO:
            for opt_name in OPTIMIZERS:
                row = []
                for with_model in (False, True):
                    n, k, t = case(name, opt_name, with_model, files)
                    for i, v in enumerate((n, k, t)):
                        totals[with_model][i] += v
                    row.append(f"{k / n:6.1%} {t / n:6.1%}")
                print(f"{name:34} {opt_name:18} {n:>3}  {row[0]}  | {row[1]}")
        for with_model, (n, k, t) in totals.items():
            label = "with model" if with_model else "without model"
            print(f"TOTAL {label:14} tensors={n} kind={k / n:.1%} ({k}/{n}) trainable={t / n:.1%} ({t}/{n})")
        if args.hf:
            hf_cases(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
