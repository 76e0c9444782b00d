#!/usr/bin/env python3
"""An example `exec` handler: the task envelope arrives as JSON on stdin,
the result goes to stdout as JSON; a non-zero exit is a failure with
stderr as the error. Any language works the same way."""
import json
import sys

envelope = json.load(sys.stdin)
payload = envelope.get("payload") or {}
text = payload.get("text") if isinstance(payload, dict) else None
if not isinstance(text, str):
    print("payload needs a 'text' string", file=sys.stderr)
    sys.exit(2)
words = text.split()
print(json.dumps({"words": len(words), "unique": len(set(words)), "attempt": envelope.get("attempt")}))
