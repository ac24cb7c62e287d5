"""Training: train() in sections (settings.py), the train state and its shardings, the
pure train_step and the program `t5lite plan` compiles ahead of time (step.py), the step loop
shared with DoReMi (loop.py), optimizers and schedules, preemption, and the planner."""
