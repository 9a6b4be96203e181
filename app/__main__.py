"""python -m app: serve the demo (default: the embedded sparsecut-tiny family on http://127.0.0.1:7860).

    python -m app                                                  # sparsecut-tiny and its siblings vs llava-tiny
    python -m app --model runs/stage2 --baseline llava-hf/llava-1.5-7b-hf --device cuda
    python -m app --model runs/sparse-uniform --model runs/sparse-top --baseline runs/llava --port 8080
"""

from __future__ import annotations

import argparse
import sys

from sparsecut.evaluation.generation import DTYPES

from .streaming import CPU_THREADS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None, metavar="PATH_OR_HUB_ID",
                        help="a SparseCut checkpoint folder, an HF LLaVA-1.5 folder or hub id, or a shipped name; "
                             "repeat for one pattern choice per model (default: the embedded family)")
    parser.add_argument("--baseline", metavar="PATH_OR_HUB_ID",
                        help="the LLaVA model to compare with (default: llava-tiny with the embedded family; none with --model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: bfloat16 on a GPU that supports it, float32 otherwise; int8: the LLM's linear "
                             "layers in int8 on the CPU (faster without bf16 kernels; gradient views off)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max-image-mb", type=float, default=10.0, help="largest accepted image file in MB of 10^6 bytes (default: 10)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests run at once per action (default: 2)")
    parser.add_argument("--threads", type=int, default=CPU_THREADS,
                        help=f"torch CPU threads per computation (default: {CPU_THREADS}; each answer generates in a "
                             "thread of its own, so a comparison's two models run at once, one per core: faster than "
                             "two threads each on 2 cores, see README 'Latency')")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .checkpoints import FamilyNotShipped, served_specs

    if args.max_image_mb <= 0:
        sys.exit(f"--max-image-mb must be > 0; got {args.max_image_mb}.")
    if args.threads < 1:
        sys.exit(f"--threads must be at least 1; got {args.threads}.")
    try:
        models, baseline = served_specs(args.model, args.baseline)
    except (FamilyNotShipped, ValueError) as err:
        sys.exit(f"python -m app: {err}")

    import torch

    from .engine import Engine
    from .request_checks import RequestError
    from .ui import build_demo, launch

    torch.set_num_threads(args.threads)
    engine = Engine(models, baseline, device=args.device, dtype=args.dtype, max_image_mb=args.max_image_mb)
    for name in dict.fromkeys([engine.models[0], *([engine.baseline] if engine.baseline else [])]):
        try:  # load the defaults now, so the first request does not wait; a failure is shown in the page when used
            engine.load(name)
        except RequestError as err:
            print(f"warning: {err}", file=sys.stderr)
    demo = build_demo(engine, concurrency=args.concurrency)
    launch(demo, server_name=args.host, server_port=args.port, share=args.share,
           max_file_size=int(2 * args.max_image_mb * 1e6))  # uploads over twice the limit never reach the disk
    return 0


if __name__ == "__main__":
    sys.exit(main())
