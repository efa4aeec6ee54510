from core.runtime.runner import Runner, RunnerSettings

__all__ = ["Runner", "RunnerSettings"]
