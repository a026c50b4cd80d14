"""Stage two: train the student against the cached teacher targets with HuggingFace Accelerate.

Each process takes its slice of every scheduled global batch. Text features, frame states and AFA
logits are gathered with gradients, so the losses cover the global B x B matrix.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from cache import CacheNotFoundError, TeacherCache
from cache.fingerprint import FingerprintMismatchError, compare
from pipeline import optim
from pipeline.config import Config, save_config
from pipeline.data.samples import build_schedule, steps_per_epoch, tokenize_samples
from pipeline.data.step_dataset import ScheduleDataset, TrainingTables, local_rows
from pipeline.losses import NonFiniteLossError, TeachCLIPLoss, assert_finite_terms
from pipeline.models.factory import build_student, freeze_clip_layers
from pipeline.models.preprocess import normalize_frames
from pipeline.models.student import TeachCLIPStudent
from pipeline.models.teachers import canonical_teacher_name, load_teacher
from stages.common import cache_fingerprint, default_cache_path, frame_settings, load_split
from stages.evaluate import evaluate_model
from stages.precompute import describe_teachers

logger = logging.getLogger(__name__)

# TeachCLIP clamps exp(logit_scale) at 100 after every optimiser step, as CLIP did.
MAX_LOGIT_SCALE = math.log(100)
STEP_LOG = "train_log.jsonl"
VAL_LOG = "val_log.jsonl"
CHECKPOINT_NAME = "pytorch_model.bin"
BEST_DIR = "best"
# Resume state: one folder per save under STATE_DIR, and LATEST_FILE naming the last complete one.
STATE_DIR = "state"
PROGRESS_FILE = "progress.json"
LATEST_FILE = "latest.json"


@dataclass
class DistillResult:
    output_dir: Path
    best_checkpoint: Path
    best_r1: float
    final_checkpoint: Path
    steps: int


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes along dim 0, keeping gradients for the local part.

    torch.distributed.nn.all_gather sums the gradients of all processes' losses before slicing,
    so together with DDP's gradient mean the update equals a single process on the global batch.
    The reference's AllGather returns only the local slice, which scales its gradient by 1 / processes.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return torch.cat(dist_nn.all_gather(tensor.contiguous()), dim=0)


def verify_cache(config: Config, cache: TeacherCache, cache_path: Path) -> None:
    """Raise FingerprintMismatchError unless the cache was made from this config's settings, then require it complete.

    Which videos precompute skipped depends on the files found then, not on the config, so the
    stored list is reused instead of scanning the videos again.
    """
    stored = cache.fingerprint
    skipped = dict.fromkeys(stored.fields.get("skipped_videos", []), "skipped by precompute")
    split = load_split(config, "train", skipped=skipped)
    expected = cache_fingerprint(config, split, describe_teachers(config))
    differences = compare(expected, stored)
    if differences:
        raise FingerprintMismatchError(cache_path, differences)
    cache.require_complete()


def student_logits(model: torch.nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Global logits [B, B] and frame weights [B, F] from this process's slice of the batch."""
    frames = normalize_frames(batch["frames"].to(device))  # [local, frames, 3, H, W]
    return model(batch["input_ids"].to(device), frames, batch["frame_mask"].to(device), gather=gather_with_grad)


def write_step_log(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def save_student(model: TeachCLIPStudent, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)  # a killed save never leaves a truncated checkpoint under the final name
    try:
        from safetensors.torch import save_file

        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(directory / "model.safetensors"))
    except ImportError:
        logger.warning("safetensors is not installed; wrote only %s", path)
    return path


@dataclass
class TrainingData:
    tables: TrainingTables
    cache_path: Path | None  # None when the teachers run online
    use_cached_frames: bool
    clip_times: dict
    teacher_names: tuple[str, ...]  # in the order targets arrive in each batch


def cached_training_data(config: Config) -> TrainingData:
    """Schedule, tokens and targets from the teacher cache, after checking its fingerprint."""
    cache_path = default_cache_path(config)
    try:
        cache = TeacherCache.open(cache_path, mode="r")
    except CacheNotFoundError as error:
        raise CacheNotFoundError(
            f"{error}. Run `teachclip-pipeline precompute` with this config first, pass --cache PATH to an "
            "existing cache, or train with --online teachers"
        ) from error
    with cache:
        verify_cache(config, cache, cache_path)
        tables = TrainingTables.from_cache(cache)
        use_cached_frames = bool(cache.manifest.get("store_frames", False))
        teacher_names = tuple(sorted(cache.teacher_names))
    clip_times = load_split(config, "train", scan=False).annotations.clip_times
    return TrainingData(tables, cache_path, use_cached_frames, clip_times, teacher_names)


def online_training_data(config: Config) -> TrainingData:
    """Build the schedule and tokens that precompute would cache, from the config alone."""
    split = load_split(config, "train", report_dir=Path(config.train.output_dir))
    tokens = tokenize_samples(split.samples, config.datasets.max_words)
    schedule = build_schedule(split.samples, config.train.batch_size, config.train.epochs, config.train.seed,
                              expand_sentences=config.datasets.expand_msrvtt_sentences)
    tables = TrainingTables(schedule, split.samples.text_index, split.samples.video_index,
                            tokens.input_ids, tokens.attention_mask, split.samples.video_ids)
    names = tuple(sorted(canonical_teacher_name(spec.name) for spec in config.distillation.teachers))
    return TrainingData(tables, None, False, split.samples.clip_times, names)


def gather_features(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate a teacher's per-item features over processes (no gradients: teachers are frozen)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return features
    gathered = {}
    for key, value in features.items():
        parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, value.contiguous())
        gathered[key] = torch.cat(parts)
    return gathered


@torch.no_grad()
def online_targets(teachers: list, batch: dict, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run each teacher on this process's slice, gather, and apply its pairwise head to the global batch."""
    frames = normalize_frames(batch["frames"].to(device))  # [local, frames, 3, H, W]
    frame_mask = batch["frame_mask"].to(device).long()
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    all_logits, all_frames = [], []
    for teacher in teachers:
        texts = gather_features(teacher.encode_texts(input_ids, attention_mask))
        videos = gather_features(teacher.encode_videos(frames, frame_mask))
        logits, frame_targets = teacher.batch_targets(texts, videos)  # [B, B], [B, F]
        all_logits.append(logits.float())
        all_frames.append(frame_targets.float())
    return all_logits, all_frames


def load_online_teachers(config: Config, device: torch.device) -> list:
    teachers = [load_teacher(spec.name, spec.checkpoint, precision=config.model.precision).to(device).eval()
                for spec in config.distillation.teachers]
    # Sorted by name, the order in which cached targets are read, so both paths sum teachers alike.
    return sorted(teachers, key=lambda teacher: teacher.name)


def prepare_run_directory(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an earlier run unless asked to resume it or to start over."""
    earlier = [output_dir / name for name in (STEP_LOG, VAL_LOG, STATE_DIR) if (output_dir / name).exists()]
    if earlier and not resume:
        if not overwrite:
            raise FileExistsError(
                f"run directory {output_dir} already contains a run ({', '.join(path.name for path in earlier)}); "
                "pass --resume to continue it, --set train.overwrite=true to start it over, or choose another "
                "--output-dir"
            )
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        logger.warning("train.overwrite is set: removed the earlier run's logs and state from %s", output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def make_accelerator(config: Config) -> Accelerator:
    """Build the Accelerator; a single process may switch mixed precision between runs (tests, notebooks)."""
    shared = AcceleratorState._shared_state
    if shared and shared.get("mixed_precision") != config.train.mixed_precision and PartialState().num_processes == 1:
        # NOTE: _reset_state is Accelerate's private reset (accelerate 1.16); several processes never reach it.
        AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.train.mixed_precision,
                       log_with=config.train.log_with or None, project_dir=config.train.output_dir)


def run_distill(config: Config, resume: bool = False, online: bool = False) -> DistillResult:
    """Train the student for config.train.epochs over the schedule; returns the best checkpoint.

    With `online`, the teachers run inside the loop on each batch, as the reference does, instead
    of reading the cache.
    """
    if config.train.gradient_accumulation_steps != 1:
        raise ValueError(
            "train.gradient_accumulation_steps must be 1: TeachCLIP's losses are computed over the whole scheduled "
            "batch, and micro-batches would change them. Use more processes to fit a large batch"
        )
    accelerator = make_accelerator(config)
    if config.train.log_with:
        accelerator.init_trackers("teachclip-distill", config={"lr": config.train.lr, "epochs": config.train.epochs,
                                                               "batch_size": config.train.batch_size})
    device = accelerator.device
    output_dir = Path(config.train.output_dir)
    if accelerator.is_main_process:
        prepare_run_directory(output_dir, resume=resume, overwrite=config.train.overwrite)
    data = online_training_data(config) if online else cached_training_data(config)
    teachers = load_online_teachers(config, device) if online else []
    # Scanned before training, so a missing validation video stops the run now rather than after an epoch.
    val_split = load_split(config, "val") if accelerator.is_main_process else None

    # Seeded right before the student is built, so its fresh layers start the same in every mode.
    set_seed(config.train.seed)
    model = build_student(config)
    freeze_clip_layers(model, config.model.freeze_layer_num)
    if accelerator.is_main_process:
        save_config(config, output_dir / "config.yaml")
    total_steps = len(data.tables.schedule)
    optimizer, scheduler, _ = optim.build_optimizer(
        model, config.train.optimizer, lr=config.train.lr, coef_lr=config.train.coef_lr,
        warmup=config.train.warmup_proportion, t_total=total_steps, max_grad_norm=config.train.max_grad_norm,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if scheduler is not None:
        # Stepped by hand once per global batch: Accelerate's scheduler wrapper would step once per process.
        accelerator.register_for_checkpointing(scheduler)
    loss_fn = TeachCLIPLoss(config.distillation.distill_method, config.distillation.fine_method, config.distillation.beta)

    rows = local_rows(config.train.batch_size, accelerator.process_index, accelerator.num_processes)
    dataset = ScheduleDataset(data.tables, rows, config.datasets.video_path, frame_settings(config, "train"),
                              data.clip_times, config.datasets.decode_timeout_s, config.train.seed,
                              cache_path=data.cache_path, use_cached_frames=data.use_cached_frames)
    progress_state = restore(accelerator, output_dir) if resume else {"steps_done": 0, "best_r1": -1.0}
    start_step, best_r1 = progress_state["steps_done"], progress_state["best_r1"]
    loader = DataLoader(dataset, batch_size=None, sampler=list(range(start_step, total_steps)),
                        num_workers=config.datasets.num_thread_reader)

    per_epoch = steps_per_epoch(data.tables.schedule, config.train.epochs)
    if start_step >= total_steps:
        logger.info("the run in %s already finished all %d steps; nothing left to train", output_dir, total_steps)
    logger.info("training %d steps (%d per epoch) from step %d with %d process(es), teachers %s", total_steps,
                per_epoch, start_step, accelerator.num_processes,
                "online" if online else f"cached in {data.cache_path}")
    progress = tqdm(total=total_steps, initial=start_step, desc="distill", unit="step",
                    disable=not accelerator.is_local_main_process)

    model.train()
    step_started = time.perf_counter()
    for batch in loader:
        step = int(batch["step"])
        if online:
            teacher_logits, teacher_frames = online_targets(teachers, batch, device)
        else:
            teacher_logits = list(batch["teacher_logits"].to(device))
            teacher_frames = list(batch["teacher_frames"].to(device))
        check_targets(data.teacher_names, teacher_logits, teacher_frames, step, batch["sample_ids"].tolist())

        logits, frame_weights = student_logits(model, batch, device)
        terms = loss_fn(logits, frame_weights, teacher_logits, teacher_frames)
        assert_finite_terms(terms, step, batch["sample_ids"].tolist())
        accelerator.backward(terms.total)
        # TeachCLIP clips the global gradient norm here, and BertAdam clips each parameter again in its step.
        accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        model_module(model).clamp_logit_scale(MAX_LOGIT_SCALE)

        seconds = time.perf_counter() - step_started
        step_started = time.perf_counter()
        record = {"step": step, "epoch": step // per_epoch, "loss": terms.total.item(),
                  "ground_truth": terms.ground_truth.item(), "coarse": terms.coarse.item(),
                  "fine": terms.fine.item(),
                  "lr": config.train.lr * optim.warmup_cosine(step / total_steps, config.train.warmup_proportion),
                  "seconds": seconds}
        if accelerator.is_main_process:
            write_step_log(output_dir / STEP_LOG, record)
        accelerator.log(record, step=step)
        progress.set_postfix(loss=f"{record['loss']:.4f}", s_per_step=f"{seconds:.2f}")
        progress.update(1)

        done = step + 1
        if done % per_epoch == 0:
            best_r1 = end_epoch(accelerator, model, config, val_split, done // per_epoch - 1, output_dir, best_r1, device)
            model.train()
        if done % per_epoch == 0 or (config.train.save_every_steps and done % config.train.save_every_steps == 0):
            save_progress(accelerator, output_dir, done, best_r1)
    progress.close()

    accelerator.wait_for_everyone()
    final_path = output_dir / "final" / CHECKPOINT_NAME
    if accelerator.is_main_process:
        final_path = save_student(model_module(model), final_path.parent)
        plot_training_curves(output_dir)
    accelerator.end_training()
    return DistillResult(output_dir, output_dir / BEST_DIR / CHECKPOINT_NAME, best_r1, final_path, total_steps)


def check_targets(names: tuple[str, ...], teacher_logits: list[torch.Tensor], teacher_frames: list[torch.Tensor],
                  step: int, sample_ids: list[int]) -> None:
    """Stop on a NaN or Inf teacher target, naming the step, the teacher and the samples, before training on it."""
    for kind, tensors in (("logits", teacher_logits), ("frame targets", teacher_frames)):
        for name, tensor in zip(names, tensors):
            if not torch.isfinite(tensor).all():
                raise NonFiniteLossError(
                    f"step {step}: teacher '{name}' {kind} contain NaN or Inf (sample ids {sample_ids[:20]}); "
                    "run `teachclip-pipeline cache verify` on the cache and rerun precompute for the damaged steps"
                )


def plot_training_curves(output_dir: Path) -> Path | None:
    """Draw the per-step losses and the validation R@1 per epoch to training_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [json.loads(line) for line in (output_dir / STEP_LOG).read_text().splitlines() if line.strip()]
    val_path = output_dir / VAL_LOG
    epochs = [json.loads(line) for line in val_path.read_text().splitlines() if line.strip()] if val_path.is_file() else []
    if not steps:
        return None

    figure, (loss_axis, recall_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for term in ("loss", "ground_truth", "coarse", "fine"):
        loss_axis.plot([record["step"] for record in steps], [record[term] for record in steps], label=term)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    recall_axis.plot([record["epoch"] for record in epochs], [record["R1"] for record in epochs], marker="o")
    recall_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    recall_axis.set_ylim(bottom=0)
    recall_axis.set_xlabel("epoch")
    recall_axis.set_ylabel("validation text-to-video R@1 (%)")
    figure.tight_layout()
    path = output_dir / "training_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def model_module(model: torch.nn.Module) -> TeachCLIPStudent:
    return model.module if hasattr(model, "module") else model


def end_epoch(accelerator: Accelerator, model, config: Config, val_split, epoch: int, output_dir: Path,
              best_r1: float, device: torch.device) -> float:
    """Save the epoch's student, validate it, and keep it as best when its R@1 is at least the best so far."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        student = model_module(model)
        epoch_path = save_student(student, output_dir / f"epoch_{epoch}")
        result = evaluate_model(student, config, "val", device, split=val_split)
        r1 = result["text_to_video"]["R1"]
        logger.info("epoch %d: validation text-to-video R@1 %.2f (best so far %.2f)", epoch, r1, max(best_r1, r1))
        write_step_log(output_dir / VAL_LOG, {"epoch": epoch, **result["text_to_video"]})
        if r1 >= best_r1:
            best_r1 = r1
            shutil.copytree(epoch_path.parent, output_dir / BEST_DIR, dirs_exist_ok=True)
    accelerator.wait_for_everyone()
    return best_r1


def save_progress(accelerator: Accelerator, output_dir: Path, steps_done: int, best_r1: float) -> None:
    """Save Accelerate state (model, optimiser, RNG) with the step count and best R@1, for --resume.

    Each save goes to its own folder and `latest.json` is replaced atomically afterwards, so a run
    killed during a save resumes from the previous complete one.
    """
    state_root = output_dir / STATE_DIR
    target = state_root / f"step_{steps_done:08d}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / PROGRESS_FILE).write_text(json.dumps({"steps_done": steps_done, "best_r1": best_r1}))
        pointer = state_root / LATEST_FILE
        temporary = pointer.with_suffix(".tmp")
        temporary.write_text(json.dumps({"folder": target.name}))
        temporary.replace(pointer)
        for old in state_root.glob("step_*"):
            if old.is_dir() and old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("saved training state after step %d to %s", steps_done, target)
    accelerator.wait_for_everyone()


def restore(accelerator: Accelerator, output_dir: Path) -> dict:
    """Load the last complete saved state; returns {"steps_done", "best_r1"}."""
    state_root = output_dir / STATE_DIR
    pointer = state_root / LATEST_FILE
    if not pointer.is_file():
        raise FileNotFoundError(
            f"--resume found no saved state under {state_root}; run distill without --resume to start from step 0"
        )
    target = state_root / json.loads(pointer.read_text())["folder"]
    accelerator.load_state(str(target))
    progress = json.loads((target / PROGRESS_FILE).read_text())
    logger.info("resuming after step %d from %s", progress["steps_done"], target)
    return progress
