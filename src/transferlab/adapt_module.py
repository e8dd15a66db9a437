"""DomainAdaptationModule: the TransferModule with a second domain, scored on its labels and adapted to."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from transferlab.adapt import DomainAdaptation, batchnorms, statistics_of
from transferlab.batches import FeatureBatch
from transferlab.errors import ConfigError
from transferlab.module import TransferModule
from transferlab.optim import ParamGroup
from transferlab.validators import DIRECTIONS, ImportanceWeightedValidation, TargetValidators


class DomainAdaptationModule(TransferModule):
    """A :class:`TransferModule` for a run with target data (:class:`~transferlab.data.target.TargetData`).

    With ``adaptation``, training batches come as ``{"source": batch, "target": batch}``: both domains pass the
    backbone as one batch (so BatchNorm normalises with statistics of both), the source rows give the
    classification loss and ``adaptation`` adds its loss on what the head's classifier reads (``head.hidden``'s
    output). The second val loader is the target's: its predictions give the validators that need no labels
    (:mod:`transferlab.validators`, ``target/entropy``, ...); with ``score_target`` (a labelled target) they are
    also scored against its labels, as the second test loader is, logged as ``target/acc``, ...
    With ``target_batches`` (AdaBN: ``adapt.target_statistics``), the target's val and test passes run with
    BatchNorm statistics estimated on those batches (the target's training images, without augmentation).
    A source-free ``adaptation`` (SHOT) gets batches ``{"target": batch}`` alone and its loss only; the classifier's
    weights are read detached, so no gradient (nor weight decay, which skips parameters without one) moves them.
    Without ``source_data`` (``data.source=none``) the target's are the only val and test loaders, and its test
    fills the confusion matrix.
    """

    def __init__(
        self,
        *args: Any,
        adaptation: DomainAdaptation | None = None,
        score_target: bool = False,
        target_batches: Callable[[], Iterable] | None = None,
        source_data: bool = True,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.adaptation, self.score_target = adaptation, bool(score_target)
        self.source_data = bool(source_data)
        self.target_loader = 1 if source_data else 0  # the dataloader_idx of the target's val and test batches
        self.target_batches = target_batches
        self._statistics: contextlib.ExitStack | None = None
        self.target_validators = TargetValidators()
        self.importance_weighted = ImportanceWeightedValidation()
        if score_target:  # logged under target/ in validation and in testing alike
            self.target_val_metrics = self.val_metrics.clone(prefix="target/")
            self.target_test_metrics = self.val_metrics.clone(prefix="target/")

    def training_step(self, batch, batch_idx):
        if not isinstance(batch, dict):  # a target to score only (or AdaBN): training sees the source alone
            return super().training_step(batch, batch_idx)
        if "source" not in batch:
            return self._source_free_step(batch["target"])
        source, target = batch["source"], batch["target"]
        num_source = len(source.target)
        if isinstance(source, FeatureBatch):
            features = torch.cat([source.features, target.features])
        else:  # not forward: the head's parts are needed apart
            features = self.encode(self.inputs.concat([source.inputs, target.inputs]))
        adapted = self.head.hidden(features)
        logits = self.head.fc(adapted)
        loss, _ = self.score(logits[:num_source], source.target, self.train_metrics, "train")
        progress = self.trainer.global_step / max(1, self.trainer.estimated_stepping_batches)
        extra, logs = self.adaptation(adapted, self._class_logits(logits), num_source, progress)
        self.log("adapt/loss", extra, on_step=True, on_epoch=True, batch_size=num_source)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=num_source)
        return loss + extra

    def _source_free_step(self, target):
        features = target.features if isinstance(target, FeatureBatch) else self.encode(target.inputs)
        adapted = self.head.hidden(features)
        fc = self.head.fc
        logits = F.linear(adapted, fc.weight.detach(), None if fc.bias is None else fc.bias.detach())
        loss, logs = self.adaptation(adapted, self._class_logits(logits), 0, 0.0)
        size = len(target.target)
        self.log("adapt/loss", loss, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=size)
        return loss

    def _class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """A logit per class, as the adaptation losses take them: a binary head's one logit as two columns."""
        return torch.cat([-logits / 2, logits / 2], 1) if self.binary else logits

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        # What the head's classifier reads: target/dev's domain classifier tells the two domains apart on it.
        features = self.head.hidden(batch.features if isinstance(batch, FeatureBatch) else self.encode(batch.inputs))
        logits = self.head.fc(features)
        if dataloader_idx != self.target_loader:  # the source's val
            _, probs = self.score(logits, batch.target, self.val_metrics, "val")
            picked = probs.gather(1, batch.target.unsqueeze(1)).squeeze(1)
            self.importance_weighted.update(features, -torch.log(picked.clamp_min(1e-12)))  # each one's loss
            return
        if self.score_target:
            _, probs = self.score(logits, batch.target, self.target_val_metrics, "target")
        else:
            probs = self.probabilities(logits)
        self.target_validators.update(probs)
        if self.source_data:
            self.importance_weighted.update(features)

    def on_validation_epoch_end(self) -> None:
        self._source_statistics()
        # Every rank's examples, gathered by the metrics: equal on every rank, so sync_dist warns of nothing.
        if self.target_validators.update_called:
            self.log_dict(self.target_validators.compute(), sync_dist=True)
            self.target_validators.reset()
        if self.importance_weighted.update_called:
            self.log("target/dev", self.importance_weighted.compute(), sync_dist=True)
            self.importance_weighted.reset()

    # AdaBN: the target's loader runs after the source's, with the target's statistics.
    # Cached features (epochs whose backbone is frozen) were computed once: no BatchNorm runs on them.
    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if dataloader_idx == self.target_loader and not isinstance(batch, FeatureBatch):
            self._target_statistics()

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if dataloader_idx == self.target_loader and not isinstance(batch, FeatureBatch):
            self._target_statistics()

    def on_test_epoch_end(self) -> None:
        self._source_statistics()

    def _target_statistics(self) -> None:
        if self.target_batches is None or self._statistics is not None:
            return
        from pytorch_lightning.utilities import move_data_to_device

        self._statistics = contextlib.ExitStack()
        # A batch of one has no batch statistics to give (BatchNorm refuses it in train mode), as in training.
        batches = (b for b in self.target_batches() if len(b.target) > 1)
        inputs = (move_data_to_device(batch.inputs, self.device) for batch in batches)
        self._statistics.enter_context(statistics_of(self.backbone, inputs, self.encode))

    def _source_statistics(self) -> None:
        if self._statistics is not None:
            self._statistics.close()
            self._statistics = None

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        if dataloader_idx != self.target_loader:
            return super().test_step(batch, batch_idx)
        _, probs = self.score(self.logits(batch), batch.target, self.target_test_metrics, "target")
        if not self.source_data:
            self.confusion.update(probs.argmax(1), batch.target)

    def param_groups(self) -> list[ParamGroup]:
        """The model's groups, then the discriminator's, which no phase freezes or rescales."""
        extra = self.adaptation.param_groups() if self.adaptation is not None else []
        return [*super().param_groups(), *extra]

    def metric_names(self, stages=("train", "val")) -> list[str]:
        if self.adaptation is not None and self.adaptation.source_free:
            stages = ("val",) if self.source_data else ()  # no labelled source batch trains
        validators = [m for m in DIRECTIONS if self.source_data or m != "target/dev"]  # dev weighs source val
        return [*super().metric_names((*stages, "target") if self.score_target else stages), *validators]


def build_adaptation(
    factory: Callable[..., DomainAdaptation] | None,
    schedule,
    phases,
    backbone: torch.nn.Module,
    head,
    num_classes: int,
    max_epochs: int,
) -> DomainAdaptation | None:
    """``factory`` (the ``adapt`` group's partial DomainAdaptation) on what the head's classifier reads; None
    without one. An adapter with nothing it can move is a ConfigError: adversarial methods adapt the features (a
    trained backbone or the head's hidden layer), MCC the classifier too, adabn and mixed_bn the backbone's
    BatchNorm statistics (a backbone that runs, with BatchNorm layers)."""
    if factory is None:
        return None
    adaptation = factory(in_features=head.fc.in_features, num_classes=num_classes)
    epochs = range(int(max_epochs))
    backbone_trains = any(not phases.backbone_frozen(e) for e in epochs)
    if adaptation.source_free and any(p.probe == "exact" for p in schedule.phases):
        raise ConfigError(
            f"adapt.source_ckpt={adaptation.source_ckpt}: a source-free run keeps the source classifier, and this "
            "schedule refits it by the exact probe; use a schedule without a probe phase (e.g. schedule=full)"
        )
    if not adaptation.has_loss:  # BatchNorm alone: adabn, mixed_bn
        option = "adapt.target_statistics=true" if adaptation.target_statistics else "adapt.target_in_batchnorm=true"
        if not batchnorms(backbone):
            raise ConfigError(
                f"{option}: the backbone has no BatchNorm layer, and this adapts BatchNorm statistics only; "
                "use adapt=dann or adapt=mcc"
            )
        if not backbone_trains:
            raise ConfigError(
                f"{option}: the schedule freezes the whole backbone, so its cached features stand in for the "
                "images and no BatchNorm layer runs; use a schedule that trains the backbone (e.g. schedule=full)"
            )
        return adaptation
    features_train = backbone_trains or any(p.requires_grad for p in head.hidden.parameters())
    classifier_trains = features_train or any(p.probe != "exact" for p in schedule.phases)
    if adaptation.adversarial is not None and not features_train:
        option, why = f"adapt.adversarial={adaptation.adversarial_method}", ""
    elif adaptation.source_free and not features_train:
        option, why = f"adapt.source_ckpt={adaptation.source_ckpt}", " (a source-free run keeps the classifier)"
    elif not classifier_trains:
        option, why = f"adapt.mcc_weight={adaptation.mcc_weight}", " and the exact probe fits the classifier"
    else:
        return adaptation
    raise ConfigError(
        f"{option}: nothing to adapt: the schedule freezes the whole backbone and the head has no hidden layer{why}; "
        "use head=mlp (its hidden layer is then the adapted feature) or a schedule that trains the backbone "
        "(e.g. schedule=full)"
    )


def load_source_model(module: torch.nn.Module, checkpoint: dict, ckpt_path: str) -> None:
    """Start ``module`` from a source run's ``checkpoint`` (a source-free run): every model tensor, not the
    optimizer's state, nor a domain discriminator it trained with. One line if it is of another model."""
    from transferlab.resume import check_same_model

    def model_only(state: dict) -> dict:
        return {k: v for k, v in state.items() if not k.startswith("adaptation.")}

    state = model_only(checkpoint.get("state_dict") or {})
    fix = "give the checkpoint of a source run with this backbone, head and classes"
    check_same_model(state, model_only(module.state_dict()), f"adapt.source_ckpt={ckpt_path}", fix)
    module.load_state_dict(state, strict=False)
