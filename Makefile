# lit_safe: `make demo` (set up and run the main job on the embedded default), `make test` (set up and run the tests).
VENV ?= .venv
BIN := $(VENV)/bin
# One intra-op thread: on small shared CPUs more threads oversubscribe and slow training down by 30-100x
# (ENVIRONMENT.md). Override with `make demo OMP_NUM_THREADS=4` on a machine of your own.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
QUICK := configs/quickstart
RUNS := runs/quickstart

.PHONY: setup demo demo-video demo-tree test lint bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(BIN)/lit-safe fit --config $(QUICK)/sft.yaml
	$(BIN)/lit-safe fit --config $(QUICK)/reward.yaml
	$(BIN)/lit-safe test --config $(QUICK)/reward.yaml --ckpt_path $(RUNS)/reward/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/cost.yaml
	$(BIN)/lit-safe test --config $(QUICK)/cost.yaml --ckpt_path $(RUNS)/cost/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/moderation.yaml
	$(BIN)/lit-safe test --config $(QUICK)/moderation.yaml --ckpt_path $(RUNS)/moderation/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/ppo_lagrangian.yaml
	$(BIN)/lit-safe arena --policy_a $(RUNS)/sft_model --policy_b $(RUNS)/ppo_lagrangian_model \
	  --reward_model $(RUNS)/reward_model --cost_model $(RUNS)/cost_model --prompts synthetic --num_prompts 200 \
	  --max_new_tokens 48 --temperature 1.0 --output $(RUNS)/arena
	@echo ""
	@echo "The Safe RLHF pipeline on the embedded synthetic data: SFT -> reward model -> cost model -> PPO-Lagrangian,"
	@echo "then the arena above: A = the SFT policy, B = the PPO-Lagrangian policy, same prompts, same reward and cost."
	@echo "Reward model: held-out preference accuracy is test/accuracy in the first test table."
	@echo "Cost model (cost > 0 = unsafe): test/accuracy (the less safe response costs more) and"
	@echo "  test/accuracy_sign (the cost has the sign of the safety label) in the second table."
	@echo "Moderation model: test/accuracy (safe/unsafe), test/macro_f1 (19 harm categories), test/fpr_safe,"
	@echo "  test/severity_accuracy and test/flag_rate/severity_k in the third table."
	@echo "  trained models (Hugging Face format): $(RUNS)/{sft,reward,cost,moderation,ppo_lagrangian}_model"
	@echo "  arena answers and scores:             $(RUNS)/arena/arena.json, arena.csv"
	@echo "  TensorBoard logs:                     $(RUNS)   (view: $(BIN)/tensorboard --logdir $(RUNS))"

# The SafeSora video pipeline on the embedded synthetic SafeSora (real small mp4s), in about 15 minutes on 2 CPU cores.
demo-video: setup
	$(BIN)/lit-safe fit --config $(QUICK)/video_cost.yaml
	$(BIN)/lit-safe test --config $(QUICK)/video_cost.yaml --ckpt_path $(RUNS)/video_cost/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/video_reward.yaml
	$(BIN)/lit-safe test --config $(QUICK)/video_reward.yaml --ckpt_path $(RUNS)/video_reward/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/video_moderation.yaml
	$(BIN)/lit-safe test --config $(QUICK)/video_moderation.yaml \
	  --ckpt_path $(RUNS)/video_moderation/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/diffusion_sft.yaml
	$(BIN)/lit-safe fit --config $(QUICK)/diffusion_dpo.yaml
	$(BIN)/lit-safe test --config $(QUICK)/diffusion_dpo.yaml --ckpt_path $(RUNS)/diffusion_dpo/checkpoints/last.ckpt
	$(BIN)/lit-safe fit --config $(QUICK)/prompt_augmenter_sft.yaml
	$(BIN)/lit-safe fit --config $(QUICK)/prompt_augmenter_dpo.yaml
	$(BIN)/lit-safe video-arena --rewriter_a none --rewriter_b $(RUNS)/prompt_augmenter_dpo_model \
	  --reward_model $(RUNS)/video_reward_model --cost_model $(RUNS)/video_cost_model --generator synthetic \
	  --prompts synthetic --num_prompts 60 --output $(RUNS)/video_arena
	@echo ""
	@echo "The SafeSora pipeline on synthetic SafeSora (prompts, rewrites, real mp4 videos, both preferences, 12 harm labels):"
	@echo "Video cost model (cost > 0 = unsafe): test/accuracy (the less safe video costs more; pairs of two safe videos"
	@echo "  are the annotators' coin) and test/accuracy_sign in the first table; the video reward model in the second;"
	@echo "  text-video moderation (test/accuracy, test/macro_f1 over the 12 categories, test/fpr_safe) in the third."
	@echo "Diffusion-DPO (from the SFT-on-winners base): test/implicit_accuracy in the fourth table is the share of held-out"
	@echo "  pairs whose preferred video the fine-tuned UNet denoises better than its reference, relative to the other"
	@echo "  video (0.5 = chance); test/safe_preference_accuracy is the same over the pairs of one safe and one unsafe video."
	@echo "Video arena: A = the user prompt as is, B = the DPO prompt augmenter's rewrite; both rendered, scored by the"
	@echo "  video reward and cost models against the user prompt."
	@echo "  exports (Hugging Face / diffusers format): $(RUNS)/{video_cost,video_reward,video_moderation,diffusion_dpo}_model"
	@echo "  generated sample videos:                   $(RUNS)/diffusion_dpo/version_*/samples (and TensorBoard images)"
	@echo "  TensorBoard logs:                          $(RUNS)   (view: $(BIN)/tensorboard --logdir $(RUNS))"

# Tree-structured preference data (Qiu et al., arXiv 2402.10184) on the embedded synthetic task, in about 10 minutes
# on 2 CPU cores: the SFT policy (trained first if runs/quickstart/sft_model is missing) grows response trees, tree
# and chain pairs are labelled at 3 equal budgets, and 27 reward models (3 budgets x 3 seeds x 3 topologies) are
# compared against the synthetic ground truth.
demo-tree: setup
	@[ -f $(RUNS)/sft_model/model.safetensors ] || $(BIN)/lit-safe fit --config $(QUICK)/sft.yaml
	$(BIN)/lit-safe tree-experiment --config $(QUICK)/tree_experiment.yaml
	@echo ""
	@echo "Tree against chain preference data at equal label budgets (table above, 95% intervals over 3 seeds):"
	@echo "  held-out accuracy and Spearman against the synthetic ground truth on independent held-out responses;"
	@echo "  probe variance: seed-to-seed variance of standardised reward differences on fixed held-out pairs;"
	@echo "  best-of-16 gold: the true reward of the response each reward model picks among 16."
	@echo "  results, table and plots: $(RUNS)/tree_experiment/{results.jsonl,summary.md,summary.json,*.png}"
	@echo "  TensorBoard:              $(BIN)/tensorboard --logdir $(RUNS)/tree_experiment/tensorboard"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check lit_safe data_modules callbacks tests benchmarks scripts
	$(BIN)/hadolint Dockerfile

bench: setup
	$(BIN)/python benchmarks/reward_throughput.py
	$(BIN)/python benchmarks/video_loading.py
	$(BIN)/python benchmarks/diffusion_dpo_throughput.py

clean:
	rm -rf runs lightning_logs
