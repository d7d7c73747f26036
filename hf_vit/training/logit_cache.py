"""The teacher-logit cache (`--teacher_logits_cache DIR`): a teacher's top-k log-probabilities for every training
picture and epoch, on views that can be replayed, so that a later run with the same teacher, data and augmentation
learns from the same teaching without loading the teacher (TinyViT's sparse logits, for any teacher).

    LogitCache    the files: a key, and per epoch and process the rows it computed; the views it holds logits of
                  are `data.batching.SeededViews`, each drawn from (seed, epoch, index) alone, so a run replays them

On disk: `key.json` (what the logits depend on: the teacher, the data, the augmentation, the seed, k) and
`epoch{E}.rank{R}.safetensors` (`indices` (n,), `classes` (n, k) int32, `log_probs` (n, k) fp16), each written
atomically when an epoch ends. Every process writes its own rows; a later run reads them all, whatever its number of
processes. A cache whose key differs is refused; a partial one is completed (the teacher fills the missing rows).
"""

import hashlib
import json
import os
from glob import glob

import torch
from safetensors.torch import load_file, save_file

from ..guards import replaced_atomically

CACHE_FORMAT = 1
KEY_FILE = "key.json"


def teacher_fingerprint(name_or_path: str) -> str | None:
    """What identifies a local teacher: a digest of its config.json and of its weight files' names, sizes and times
    of modification (a teacher saved again counts as another; reading gigabytes of weights would cost more than the
    cache saves); None for a Hub id or a folder that has gone (the key then matches on the name alone)."""
    if not os.path.isdir(name_or_path):
        return None
    digest = hashlib.sha256()
    for name in sorted(os.listdir(name_or_path)):
        path = os.path.join(name_or_path, name)
        if name == "config.json":
            with open(path, "rb") as f:
                digest.update(f.read())
        elif name.endswith((".safetensors", ".bin")):
            status = os.stat(path)
            digest.update(f"{name}:{status.st_size}:{status.st_mtime_ns}".encode())
    return digest.hexdigest()


class LogitCache:
    """The cache in `directory` for the run that `key` describes ({"teacher", "teacher_fingerprint", "data",
    "augmentation", ...}): `lookup` the rows of (epoch, index) keys, `store` the teacher's logits for them, `flush` this
    process's new rows of an epoch to disk. Opening refuses a directory whose key differs, naming what differs."""

    def __init__(self, directory: str, key: dict, num_examples: int, num_labels: int, top_k: int):
        self.directory, self.num_examples, self.num_labels = directory, num_examples, num_labels
        self.top_k = min(top_k, num_labels)
        # as JSON has it (tuples become lists), to compare with the key on disk
        self.key = json.loads(json.dumps(dict(key, format=CACHE_FORMAT, top_k=self.top_k, num_examples=num_examples)))
        self.epochs: dict[int, dict] = {}  # epoch -> {"classes", "log_probs", "filled", "new"}
        self.open()

    def open(self) -> None:
        path = os.path.join(self.directory, KEY_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
            differ = [
                name
                for name in sorted(set(found) | set(self.key))
                if found.get(name) != self.key.get(name)
                and not (name == "teacher_fingerprint" and None in (found.get(name), self.key.get(name)))
            ]
            if differ:
                raise ValueError(
                    f"--teacher_logits_cache {self.directory} holds logits of another run (its {differ} differ from "
                    "this run's); give another directory, or empty this one"
                )
            self.key["teacher_fingerprint"] = found.get("teacher_fingerprint") or self.key.get("teacher_fingerprint")
        else:
            os.makedirs(self.directory, exist_ok=True)
            with replaced_atomically(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
                json.dump(self.key, f, indent=2)

    def epoch(self, epoch: int) -> dict:
        """The epoch's rows in memory, read from every process's file of it the first time."""
        if epoch not in self.epochs:
            rows = dict(
                classes=torch.zeros(self.num_examples, self.top_k, dtype=torch.int32),
                log_probs=torch.zeros(self.num_examples, self.top_k, dtype=torch.float16),
                filled=torch.zeros(self.num_examples, dtype=torch.bool),
                new=torch.zeros(self.num_examples, dtype=torch.bool),
            )
            for path in sorted(glob(os.path.join(self.directory, f"epoch{epoch}.rank*.safetensors"))):
                shard = load_file(path)
                indices = shard["indices"].long()
                rows["classes"][indices], rows["log_probs"][indices] = shard["classes"], shard["log_probs"]
                rows["filled"][indices] = True
            self.epochs[epoch] = rows
        return self.epochs[epoch]

    def missing(self, num_epochs: int) -> int:
        """How many (picture, epoch) rows of the first `num_epochs` epochs the cache lacks."""
        return sum(int((~self.epoch(epoch)["filled"]).sum()) for epoch in range(num_epochs))

    def lookup(self, epochs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """The (B, num_labels) log-probabilities of (epoch, index) keys, the classes beyond the top k sharing what
        is left of the probability; None if any row is missing."""
        epochs, indices = epochs.cpu(), indices.cpu().long()
        classes = torch.empty(len(indices), self.top_k, dtype=torch.long)
        top = torch.empty(len(indices), self.top_k)
        for epoch in epochs.unique().tolist():  # a batch of replayed views has one
            rows, chosen = self.epoch(epoch), epochs == epoch
            if not rows["filled"][indices[chosen]].all():
                return None
            classes[chosen] = rows["classes"][indices[chosen]].long()
            top[chosen] = rows["log_probs"][indices[chosen]].float()
        rest = self.num_labels - self.top_k
        left = (1 - top.exp().sum(-1, keepdim=True)).clamp(min=1e-12)
        filler = (left / max(rest, 1)).log() if rest else torch.full_like(left, -1e4)
        return filler.expand(-1, self.num_labels).clone().scatter(-1, classes, top)

    def store(self, epochs: torch.Tensor, indices: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep the top k of the teacher's (B, num_labels) logits, as log-probabilities, for (epoch, index) keys."""
        top, classes = torch.log_softmax(logits.float(), -1).topk(self.top_k, dim=-1)
        epochs, indices, top, classes = epochs.cpu(), indices.cpu().long(), top.cpu(), classes.cpu()
        for epoch in epochs.unique().tolist():
            rows, chosen = self.epoch(epoch), epochs == epoch
            rows["classes"][indices[chosen]] = classes[chosen].int()
            rows["log_probs"][indices[chosen]] = top[chosen].half()
            rows["filled"][indices[chosen]] = rows["new"][indices[chosen]] = True

    def flush(self, rank: int) -> None:
        """Write this process's new rows of every epoch in memory, each epoch's file replaced in one step."""
        for epoch, rows in self.epochs.items():
            if not rows["new"].any():
                continue
            path = os.path.join(self.directory, f"epoch{epoch}.rank{rank}.safetensors")
            mine = rows["new"].clone()
            if os.path.exists(path):  # a completed cache: this process's earlier rows stay
                mine[load_file(path)["indices"].long()] = True
            indices = torch.nonzero(mine).flatten()
            shard = dict(indices=indices.int(), classes=rows["classes"][indices], log_probs=rows["log_probs"][indices])
            with replaced_atomically(path) as temporary:
                save_file({name: tensor.contiguous() for name, tensor in shard.items()}, temporary)
            rows["new"].zero_()

    def bytes_per_picture(self) -> int:
        """Bytes a picture costs the cache per epoch: k classes (int32), k log-probabilities (fp16), its index."""
        return self.top_k * (4 + 2) + 4
