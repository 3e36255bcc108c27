"""Bounds on how much model text grading looks at, so every call stays fast on any input."""

# Only the tail of a response can hold its final answer; the cap keeps regex work bounded.
MAX_RESPONSE_CHARS = 200_000
# Answers longer or more deeply nested than any real MATH answer are not sent to sympy.
MAX_ANSWER_CHARS = 1_000
MAX_BRACE_DEPTH = 24
MAX_NUMBER_DIGITS = 40
