"""Write a synthetic model (see tests/model_files.py, which the tests build theirs with).

    python scripts/make_model.py out.gguf --dim 256 --layers 2 --quant Q4_0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.model_files import main  # noqa: E402

if __name__ == "__main__":
    main()
