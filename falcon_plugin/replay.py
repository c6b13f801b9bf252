"""Train items that replay identically after a resume, and a Trainer RNG file that loads under torch >= 2.6.

Why. open-unlearning's ``ForgetRetainDataset`` draws each retain partner in ``__getitem__`` from the
*global* torch RNG (``torch.randint``). A resumed run restores that RNG from ``rng_state.pth``, but
too late for those draws: transformers (4.45 and 5.x) loads it only after the first batches past the
resume point were fetched, and accelerate's dataloader fetches one batch ahead, so even the saved
state is one batch past the draws of the next batch. The resumed run then pairs its first batches
differently and ends away from the uninterrupted run (measured in the host: 3.4e-5).

How. :class:`ReplayableItems` wraps the train set and runs each ``__getitem__(index)`` with the
global torch (CPU), numpy and Python RNGs seeded from ``(seed, epoch, index)``, putting them back
afterwards. A partner is then a function of the run's seed, the epoch and the item, whenever and
however often it is fetched: the same in a straight and in a resumed run, on every transformers
version, whatever the Trainer does with the RNG state. The draws are still uniform and still fresh
every epoch (each item once per epoch under the Trainer's sampler); data loading no longer advances
the global RNG, so the Trainer's own ``rng_state.pth`` restores everything else (dropout) exactly.
The epoch comes from :class:`EpochToItems` (``on_epoch_begin``), which sees the resumed epoch too.

:func:`trainer_rng_state_loading`: transformers 4.45 reads its ``rng_state.pth`` with a bare
``torch.load``; from torch 2.6 that means ``weights_only=True``, which rejects the numpy RNG state
in the file and the resume fails. The context allows exactly the numpy types of that state (the
list transformers 5.x uses itself), for the Trainer's own file; every load stays a weights-only load.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` in ``epoch`` of a run seeded with ``seed``.

    Well mixed: SeedSequence.
    """
    words = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed the global torch CPU, numpy and Python RNGs with ``seed`` inside; restore all three after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # CPU generator only: CUDA streams (dropout on GPU) untouched
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ReplayableItems(torch.utils.data.Dataset):
    """``dataset`` whose items are drawn under RNGs seeded from ``(seed, epoch, index)`` (see the module doc).

    ``epoch`` is set by :class:`EpochToItems`. Attributes not defined here are the wrapped dataset's.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with seeded_global_rngs(item_seed(self.seed, self.epoch, int(index))):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a dataloader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def replayable(dataset: Any, seed: int) -> Any:
    """``dataset`` wrapped in :class:`ReplayableItems`, or itself when it is not a sized map-style dataset.

    Iterable datasets have no index to key on, and Hugging Face ``datasets.Dataset`` draws nothing at
    random (and the Trainer treats it specially): both are returned unchanged.
    """
    if dataset is None or isinstance(dataset, (torch.utils.data.IterableDataset, ReplayableItems)):
        return dataset
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        return dataset
    hf_datasets = sys.modules.get("datasets")
    if hf_datasets is not None and isinstance(dataset, getattr(hf_datasets, "Dataset", ())):
        return dataset
    return ReplayableItems(dataset, seed)


class EpochToItems(TrainerCallback):
    """Tells the :class:`ReplayableItems` in use which epoch starts (``int(state.epoch)`` at epoch begin).

    On a resume the Trainer has loaded the checkpoint's state by then, so the resumed epoch is seen.
    ``items`` is set by the trainer when it builds its train dataloader.
    """

    def __init__(self) -> None:
        self.items: ReplayableItems | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer callback signature)
        if self.items is not None:
            self.items.epoch = int(state.epoch or 0)
        return control


def warn_if_persistent_workers(args: Any) -> None:
    """Persistent dataloader workers keep the epoch their copy of the items had when they started."""
    if (
        getattr(args, "dataloader_persistent_workers", False)
        and getattr(args, "dataloader_num_workers", 0) > 0
    ):
        logger.warning(
            "FALCON: dataloader_persistent_workers=True: the workers keep the first epoch's item seeds, so "
            "random pairings (the host's retain partners) repeat every epoch and a resume is exact only "
            "within the epoch it started in; set dataloader_persistent_workers=false"
        )


def _numpy_rng_state_types() -> list[Any]:
    """The globals of a pickled ``np.random.get_state()`` (numpy 1 and 2), as transformers 5.x allows them."""
    core = np._core if int(np.__version__.split(".")[0]) >= 2 else np.core  # type: ignore[attr-defined]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def trainer_rng_state_loading() -> contextlib.AbstractContextManager[Any]:
    """Allow-list the numpy RNG-state types for ``torch.load(weights_only=True)``.

    Needs torch >= 2.5; else a no-op.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: its torch.load does not default to weights-only loading
        return contextlib.nullcontext()
    return safe_globals(_numpy_rng_state_types())


__all__ = [
    "EpochToItems",
    "ReplayableItems",
    "item_seed",
    "replayable",
    "seeded_global_rngs",
    "trainer_rng_state_loading",
    "warn_if_persistent_workers",
]
