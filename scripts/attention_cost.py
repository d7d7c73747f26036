"""Exercise 3: full self-attention over a 56x56x96 map (3,136 tokens) against 7x7 window attention (64 windows
of 49 tokens): 10 timed runs each after a warm-up, the theoretical FLOPs ratio and the measured speedup.

    python scripts/attention_cost.py
    python scripts/attention_cost.py --sweep --output_dir runs/attention_cost   # time against tokens, plotted
"""

import argparse
import json
import os

from hf_vit_lessons.attention import attention_cost, attention_cost_sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=56)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="repeat over several resolutions and plot")
    parser.add_argument("--output_dir", default="runs/attention_cost")
    args = parser.parse_args(argv)
    figures = attention_cost(args.side, args.side, args.dim, args.window, runs=args.runs)
    print(f"full attention over {figures['tokens']} tokens: {figures['full_seconds'] * 1000:.2f} ms per call")
    print(
        f"window attention, {figures['num_windows']} windows of {figures['window_tokens']} tokens: "
        f"{figures['window_seconds'] * 1000:.2f} ms per call"
    )
    print(
        f"theoretical speedup (N^2 d / (windows w^2 w^2 d)): {figures['theoretical_speedup']:.1f}x; "
        f"measured: {figures['measured_speedup']:.1f}x"
    )
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "attention_cost_single.json"), "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=2)
    if args.sweep:
        for row in attention_cost_sweep(output_dir=args.output_dir, dim=args.dim, window=args.window, runs=args.runs):
            print(
                f"{row['tokens']:6d} tokens: full {row['full_seconds'] * 1000:8.2f} ms, window "
                f"{row['window_seconds'] * 1000:6.2f} ms, speedup {row['measured_speedup']:.1f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
