/**
 * An exponential moving average of a {@link ModelTrainer}'s weights (Polyak averaging), kept beside
 * the trainer in f32. Saving the average instead of the last step's weights removes most of the
 * step-to-step noise of the end of a run; the trainer's own weights and moments are never changed,
 * so training goes on exactly as without it.
 *
 * The decay used at update n (1-based) is `min(decay, (1 + n) / (10 + n))`, so the first updates
 * follow the weights closely instead of averaging in the starting point for thousands of steps.
 *
 * @module
 */

import type { ModelTrainer } from "./model_train.ts";
import { readCheckpointFile, writeCheckpointFile } from "./training_loop.ts";

/**
 * The moving average of every weight of a trainer.
 *
 * @example
 * ```ts ignore
 * const average = new WeightAverage(trainer, 0.999);
 * for (const batch of batches) {
 *   await trainer.accumulateBatch(batch);
 *   trainer.step();
 *   average.update();
 * }
 * await average.saveModel("./trained"); // the averaged weights, as trainer.saveModel writes them
 * ```
 */
export class WeightAverage {
  /** The trainer whose weights are averaged. */
  readonly trainer: ModelTrainer;
  /** The decay (0: the average is the last weights). */
  readonly decay: number;
  #average = new Map<string, Float32Array>();
  #updates = 0;

  /** Starts the average at the trainer's current weights (`decay` in [0, 1)). */
  constructor(trainer: ModelTrainer, decay: number) {
    if (!(decay >= 0 && decay < 1)) {
      throw new RangeError(`Cannot average weights: decay ${decay} is not in [0, 1)`);
    }
    this.trainer = trainer;
    this.decay = decay;
    for (const t of trainer.tensors) this.#average.set(t.name, trainer.read(t.name));
  }

  /** Updates folded in so far. */
  get updates(): number {
    return this.#updates;
  }

  /** The decay the next {@link update} uses. */
  get nextDecay(): number {
    const n = this.#updates + 1;
    return Math.min(this.decay, (1 + n) / (10 + n));
  }

  /** Folds the trainer's current weights into the average (call after each step). */
  update(): void {
    const d = this.nextDecay;
    for (const t of this.trainer.tensors) {
      const avg = this.#average.get(t.name)!, w = this.trainer.read(t.name);
      for (let i = 0; i < avg.length; i++) avg[i] = d * avg[i] + (1 - d) * w[i];
    }
    this.#updates++;
  }

  /** A copy of one tensor's average. */
  read(name: string): Float32Array {
    const avg = this.#average.get(name);
    if (!avg) {
      throw new RangeError(`Cannot read weight average: the trainer has no tensor ${JSON.stringify(name)}`);
    }
    return new Float32Array(avg);
  }

  /** Writes the average and its update count to one file, atomically (to resume a run). */
  async saveState(path: string): Promise<void> {
    const tensors = this.trainer.tensors.map((t) => ({
      name: t.name,
      dtype: "F32" as const,
      shape: t.shape,
      data: this.#average.get(t.name)!,
    }));
    await writeCheckpointFile(path, tensors, this.#updates, this.#identity(), {});
  }

  /** Restores {@link saveState}'s file; one written for another trainer shape or decay is refused. */
  async loadState(path: string): Promise<void> {
    const saved = await readCheckpointFile(path, this.#identity());
    for (const t of this.trainer.tensors) this.#average.set(t.name, saved.tensor(t.name));
    this.#updates = saved.step;
  }

  #identity(): string {
    return `weight average ${this.decay} of ${this.trainer.tensorShapes}`;
  }

  /** Writes the averaged weights as a Hugging Face folder (see `ModelTrainer.saveModel`). */
  async saveModel(dir: string): Promise<void> {
    await this.trainer.saveModel(dir, (name) => this.#average.get(name)!);
  }
}
