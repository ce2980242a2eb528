"""List the files of --input_data with their line counts into --output_data/listing.txt."""

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--input_data")
parser.add_argument("--greeting")
parser.add_argument("--output_data")
args = parser.parse_args()

lines = [args.greeting]
for name in sorted(os.listdir(args.input_data)):
    with open(os.path.join(args.input_data, name)) as handle:
        lines.append(f"{name}: {len(handle.readlines())} lines")
print("\n".join(lines))
with open(os.path.join(args.output_data, "listing.txt"), "w") as handle:
    handle.write("\n".join(lines) + "\n")
