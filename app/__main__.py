"""Entry point of the demo. The app issue builds it on top of the core library and the embedded models."""

import sys

if __name__ == "__main__":
    sys.exit(
        "SparseCut app: not built yet. The model library (sparsecut/) is ready; the Gradio demo and the embedded "
        "sparsecut-tiny models land with their own issues. See README.md for what works today."
    )
