"""Loading: ``sampler`` (whole batches of question positions, seeded and sharded across ranks),
``slots`` (a ring of reusable batch buffers), ``batches`` (one vectorised gather per batch),
``loaders`` (a background thread or worker processes) and ``datamodule`` (any task's
LightningDataModule). Task-agnostic: 1 or 2 images per question."""
from butd.loading.batches import BatchDataset
from butd.loading.datamodule import VQADataModule
from butd.loading.loaders import ThreadedLoader, make_loader
from butd.loading.sampler import ShardedBatchSampler
from butd.loading.slots import SlotRing

__all__ = ["BatchDataset", "VQADataModule", "ThreadedLoader", "make_loader", "ShardedBatchSampler", "SlotRing"]
