"""`scalingfilter train`: train a tokenizer and a small/large meta-model pair on a corpus."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training import SIZES, TrainConfig as C

    parser.add_argument("--input-dir", required=True, help="corpus directory (.jsonl[.gz|.zst], .json.gz, .parquet)")
    parser.add_argument("--output-dir", required=True, help="writes small/, large/ (HF model dirs), train_log.json, checkpoint.pt")
    parser.add_argument("--sizes", default=C.sizes,
                        help=f"{' | '.join(SIZES)} | LxDxH,LxDxH (layers x width x heads of small,large); default {C.sizes}")
    parser.add_argument("--tokenizer", default=C.tokenizer, help="'new' (train byte-level BPE on the corpus) or a hub id / directory")
    parser.add_argument("--vocab-size", type=int, default=C.vocab_size, help="for a new tokenizer (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=C.seq_len, help="training context, also the models' positions (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=C.batch_size, help="sequences per step (default %(default)s)")
    parser.add_argument("--tokens", type=float, default=None, help="training tokens per model, e.g. 8e6 (default: one epoch)")
    parser.add_argument("--lr", type=float, default=C.lr, help="peak learning rate (default %(default)s)")
    parser.add_argument("--device", default=C.device, help="auto | cpu | cuda[:N] (default %(default)s)")
    parser.add_argument("--precision", default=C.precision, choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 autocast on CUDA and on CPUs with bf16 instructions")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (minutes to start, then faster steps)")
    parser.add_argument("--seed", type=int, default=C.seed)
    parser.add_argument("--text-field", default=C.text_field)
    parser.add_argument("--checkpoint-every", type=int, default=C.checkpoint_every, help="steps (default %(default)s)")
    parser.add_argument("--save-dtype", default=C.save_dtype, choices=["float32", "float16", "bfloat16"],
                        help="storage type of the saved weights (they load as float32)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint")
    parser.add_argument("--init-from", default=None, help="start both models from an earlier pair's weights (DIR with small/ and large/): a new warm-up + cosine cycle")
    parser.add_argument("--skip-tokens", type=float, default=0, help="start this many tokens into the data order (e.g. past what --init-from's pair saw)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..documents import InputError
    from ..training import TrainConfig, train_pair

    cfg = TrainConfig(
        input_dir=args.input_dir, output_dir=args.output_dir, sizes=args.sizes, tokenizer=args.tokenizer,
        vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size,
        tokens=None if args.tokens is None else int(args.tokens), lr=args.lr, device=args.device,
        precision=args.precision, threads=args.threads, seed=args.seed, compile=args.compile, text_field=args.text_field,
        checkpoint_every=args.checkpoint_every, save_dtype=args.save_dtype, resume=args.resume, init_from=args.init_from, skip_tokens=int(args.skip_tokens),
        progress=not args.no_progress,
    )
    try:
        result = train_pair(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except InputError as e:
        print(f"scalingfilter train: error: {e}", file=sys.stderr)
        return 2
    p, h = result["parameters"], result["heldout_loss"]
    print(f"wrote {args.output_dir}/small ({p['small']:,} params) and {args.output_dir}/large ({p['large']:,} params); "
          f"{result['tokens_seen']:,} tokens each; held-out loss small {h['small']:.4f} / large {h['large']:.4f}")
    return 0
