"""When to stop: a plateau of iterations without improvement, a solved task, or a maximum."""

from __future__ import annotations


def is_improvement(reward: int, best: int, broke_generated: bool, margin: int = 0) -> bool:
    """A reward above the best so far (by more than ``margin``) that breaks no accepted generated test."""
    return not broke_generated and reward > best + margin


def beyond_noise(difference: float, half_width: float, margin: float = 0.0) -> bool:
    """A measured gain counts only when it exceeds both the configured margin and the half-width of
    its 95 % interval: a difference inside its own noise is not an improvement."""
    return difference > max(margin, half_width)


def stop_reason(iteration: int, max_iterations: int, plateau: int, patience: int, best: int, max_reward: int,
                stop_when_solved: bool, train_plateau: int = 0, train_patience: int = 0) -> str | None:
    if stop_when_solved and max_reward > 0 and best >= max_reward:
        return "solved: every protected and hidden test passes"
    if patience > 0 and plateau >= patience:
        return f"plateau: {plateau} iterations without improvement"
    if train_patience > 0 and train_plateau >= train_patience:
        return (f"plateau: {train_plateau} training bursts without a held-out improvement beyond noise "
                "(margin or the interval's half-width)")
    if iteration >= max_iterations:
        return f"maximum of {max_iterations} iterations reached"
    return None
