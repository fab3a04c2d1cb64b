"""How often the demo student answers a spoken question by repeating it (the step-967 diagnosis in align.md).

    .venv/bin/python reports/demo/repeats.py artifacts/world/gap/samples.jsonl

A speech response counts as a repeat when it has >= 5 words and ends with "?" or opens like one of the mix's
spoken questions ("What is", "I have", "Consider", "... is married to").
"""

import collections
import json
import re
import sys

OPENINGS = re.compile(r"^(what is|i have|consider|.* is married to)")
stat: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0])
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["mode"] != "speech":  # only the student is asked by voice
        continue
    resp = (r["response"] or "").strip()
    s = stat[(r["task"], r["variant"])]
    s[0] += len(resp.split()) >= 5 and (resp.endswith("?") or bool(OPENINGS.match(resp.lower())))
    s[1] += 1
    s[2] += bool(r["correct"])
print("| task | voice | n | repeats the question | scored correct |")
print("|---|---|---|---|---|")
for (task, voice), (rep, n, ok) in sorted(stat.items()):
    print(f"| {task} | {voice} | {n} | {rep} ({rep / n:.0%}) | {ok} |")
