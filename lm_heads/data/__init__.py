"""Data for word-level language modelling: vocabulary, sources, token cache, synthetic language.

from lm_heads.data import LMDataModule
dm = LMDataModule("auto", batch_size=32, bptt=35)
dm.prepare_data(); dm.setup("fit")
print(dm.description, dm.vocab_size)
"""

try:  # the data tools are an extra: say which one when they are missing
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401
except ImportError as _error:
    raise ImportError(
        f"lm_heads.data needs {_error.name or 'a package that is missing'}, from the data extra: "
        "pip install 'lm-heads[data]'"
    ) from _error

from lm_heads.data.cache import CacheError, CacheLockTimeout, TokenCache
from lm_heads.data.corpus import SentenceCorpus, write_corpus
from lm_heads.data.datamodule import IGNORE_INDEX, BatchOrderSampler, LMDataModule, StreamBatches
from lm_heads.data.options import DataOptions
from lm_heads.data.sources import (
    DataUnavailableError,
    HubTextSource,
    LocalTextSource,
    MissingExtraError,
    TextSource,
    find_local,
    hub_reachable,
)
from lm_heads.data.synthetic import SyntheticLanguage
from lm_heads.data.vocab import EOS, UNK, Vocabulary

__all__ = [
    "EOS",
    "IGNORE_INDEX",
    "UNK",
    "BatchOrderSampler",
    "CacheError",
    "CacheLockTimeout",
    "DataOptions",
    "DataUnavailableError",
    "HubTextSource",
    "LMDataModule",
    "LocalTextSource",
    "MissingExtraError",
    "SentenceCorpus",
    "StreamBatches",
    "SyntheticLanguage",
    "TextSource",
    "TokenCache",
    "Vocabulary",
    "find_local",
    "hub_reachable",
    "write_corpus",
]
