#!/usr/bin/env python3
"""Scores the demo model's answers on the held-out evaluation set.

  python scripts/models/score_demo_answers.py CASES_JSON ANSWERS_JSON [--show-failures]

CASES_JSON   tests/fixtures/demo_eval/cases.json (scenes, spoken questions, facts).
ANSWERS_JSON what `gemba debug greedy-mm` printed for those cases: {"cases": [{"name": case id,
             "text": the reply, markers included}]}.
Each answer is checked with the demo's own checker (demo_common.check_answer: every camera cited
in order, and the facts it states match the scene). stdout: {"right", "total", "accuracy",
"by_intent": {intent: [right, total]}, "failures": [{"id", "reason", "text"}]}.
Only the standard library is needed (no torch), so the test suite can run it.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import SceneFacts, check_answer  # noqa: E402


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cases = json.loads(Path(sys.argv[1]).read_text())["cases"]
    answers = {c["name"]: c["text"] for c in json.loads(Path(sys.argv[2]).read_text())["cases"]}
    right, by_intent, failures = 0, {}, []
    for c in cases:
        text = answers.get(c["id"])
        if text is None:
            print(f"no answer for case {c['id']}", file=sys.stderr)
            return 2
        cams = [(cam["name"], SceneFacts(**cam["facts"])) for cam in c["cameras"]]
        ok, reason = check_answer(text, c["intent"] if cams else None, cams)
        bucket = by_intent.setdefault(c["intent"], [0, 0])
        bucket[1] += 1
        if ok:
            right += 1
            bucket[0] += 1
        else:
            failures.append({"id": c["id"], "reason": reason, "text": text})
    out = {"right": right, "total": len(cases), "accuracy": right / max(1, len(cases)), "by_intent": by_intent,
           "failures": failures}
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
