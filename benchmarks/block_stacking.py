"""Block stacking: the scripted data policy's stacking quality and the env's speed.

    python benchmarks/block_stacking.py --episodes 100 --num-steps 3000

1. The noisy scripted policy of the data (1-3 stacks per episode, pseudo-random subgoals, action noise)
   in the 5-block training env and, unchanged, in the 11-block downstream env: success rate of single
   stacks (a stack succeeds when the carried block rests on its target block once the policy has moved
   on) and the height of the highest tower at the episode's end (in blocks, and as blocks_stacked).
   Episodes may run 1000 steps (the data's limit is 400, which no 5-block episode reaches here).
   Also, as a reference for the downstream task, the same policy with ``build_tower`` (always stacking
   onto the highest tower, up to 10 stacks) in the 11-block env within one 1000-step episode.
2. Env steps/s with uniformly random actions, state-only and image observations, 5 and 11 blocks:
   per wall-clock second and per CPU second of this process (the second is what the env costs when
   the machine is shared and the process gets only part of a core).

    python benchmarks/block_stacking.py --prior-rollouts runs/<skill run>/skill_model.pt --prior-episodes 20

3. (only this, when --prior-rollouts is given) what the learned skill prior does on its own in the 11-block
   downstream env: whole 1000-step episodes of skills sampled from the prior and decoded (``spirl_sac.py
   --explore prior``, no learning), with the highest tower (blocks_stacked) at each episode's end and at its
   best, and the fraction of steps with a block lifted / on another block.

    python benchmarks/block_stacking.py --prior-rollouts runs/<skill run>/skill_model.pt --prior-num-blocks 5

   With --prior-num-blocks other than 11: the same in a downstream env with that many blocks (all on the ground),
   its states padded to the 11 block slots as the data's are (``pad_states``), so that a decoder that sees the
   state meets the states of the data's 5-block world: how much of a prior's behaviour is lost to the 5 -> 11 shift.
   With --prior-mean-skill: the prior's mean skill is executed instead of a sample (if the mean stacks no better
   than the samples, the prior's Gaussian spreads over several of the data's skills rather than around one).

    python benchmarks/block_stacking.py --policy-rollouts runs/<spirl_sac run>/spirl_sac.pt --policy-episodes 4

4. (only this) what a trained SPiRL policy does: ``spirl_sac.py --evaluate`` episodes of the checkpoint (skills
   sampled from the policy, as in training), then per episode the highest tower at the end and at its best, the
   first step with a 3-block tower, and how often a block is held in the air: over the episode, after the first
   3-block tower, and in its last 300 steps (a policy that keeps a block in the gripper instead of placing it
   shows up here). And where the blocks it has not used are: from the step its best tower first stands, the
   fraction of steps with a free block (on the table, nothing on it, not in the tallest tower) inside the
   policy's 0.48 m-wide view, the nearest free block's distance in x at that step, and the span of x the
   gripper visits afterwards (a policy that stops because the next block is out of its local view shows up here);
   the x of the tallest tower, and each later carry (a block held >= 5 steps): how far it moved the block and
   where it let go, relative to the tower (a policy that brings blocks but misses the tower shows up here).
   Last, at the episodes' skill decisions: the policy's and the prior's sigma (pre-tanh, mean over latent dims) and
   KL(pi || p_a) summed over latent dims (how sharp the policy's skills may be under the divergence bound delta).
   With --policy-half-width W the episodes run on a table of half width W (the row unchanged; the gripper reaches
   further, the frames show the walls at W); with --policy-drawn-half-width W only the frames move the walls to W:
   does a policy steer by the walls it sees?
    python benchmarks/block_stacking.py --data-skills runs/<skill run>/skill_model.pt --data-skill-episodes 6
5. (only this) can the skill space carry the data's stacking? The scripted data policy (3 stacks) in the 11-block
   row plans each H-step chunk on a copy of the env; its H actions are encoded (z = the mean of q(z|a)), decoded
   open loop, and the decoded actions run in the real env. The same episodes with the planned actions themselves
   ("raw", equal to the script) give the reference. Open-loop skill models only. If the decoded skills stack as
   the script does, what a SPiRL policy lacks is the choice of z (the prior and the policy), not the decoder.
    python benchmarks/block_stacking.py --scripted-return 6
6. (only this) what the scripted policies earn of the authors' reward in 1000-step episodes of the 11-block row:
   the data policy (3 stacks) and the tower reference, holding still with open fingers once the script is done,
   the return split as item 4 splits a policy's (lift flags, delivery flags, height).
    python benchmarks/block_stacking.py --critic-probe runs/<spirl_sac run>/spirl_sac.pt --critic-probe-episodes 4
7. (only this) do a trained run's critics know which skill pays where its policy idles? Episodes of the policy (skills
   sampled from pi, as in training); at each decision where a tower stands (blocks_stacked >= 1) and no block has been
   lifted for 100 steps (then at most every 50 steps, up to step 850), three groups of candidate skills: 6 of the
   policy's, the 6 of 256 prior samples the critics value most, 6 plain prior samples. Each candidate is executed from a
   snapshot of the env (MuJoCo state, reward flags, frames, step count), followed by 12 of the policy's skills, and the
   env is put back: the realised discounted return (bootstrapped after the 13 skills with the critics' value of the
   policy's skill there), whether a new block was lifted, the tower's change. Per group: min(Q1, Q2) of the candidates
   against the policy's mean, and what they realised; per state: the correlation between Q and the realised return
   over the 18 candidates (critics that rank skills by what they earn: clearly positive; near 0: their differences
   between skills are noise at those states). Needs a run's checkpoint with its critics (spirl_sac.pt or a kept one).
    python benchmarks/block_stacking.py --carry-destinations data/block_stacking.hdf5
8. (only this) is where a carry goes visible when the block is picked up? The policy and the prior see a 0.48 m window
   around the gripper. For every carry (a block held >= 5 steps) of the data's trajectories: did it end on another
   block, was that block in the window at the pick-up, and, where a tower of >= 2 blocks stood at the pick-up, was
   the tower in view and did the carry end on it. --prior-rollouts (11 blocks, sampled skills) and --policy-rollouts
   print the same line for their episodes: a policy that finishes its carries on the tallest tower only when it
   sees the tower at the pick-up is limited by its view, not by its skills. A second line says what follows each
   let-go (a carry let go with >= 100 steps left): was a free block in view 10 steps later, and did the gripper pick
   up another block later in the episode, one out of view at the let-go or not, and how far in x the gripper got
   from the let-go point within 100 steps. A policy that never fetches beyond its view picks up nothing after a
   let-go with nothing in view. --view-limited-script prints it too.
    python benchmarks/block_stacking.py --nudge-probe runs/<spirl_sac run>/spirl_sac.pt --nudge-probe-episodes 8
9. (only this) is the trip out to the next block all that a policy idling at its tower lacks? Episodes of the policy
   (skills sampled from pi, reset seeds 10 001 on); at its first decision where a tower of >= 2 blocks stands and no
   block has been lifted for 100 steps, the env is snapshotted and three branches of 300 more env steps run from it: the
   policy alone (control); a scripted move first (fingers open, up to a height clear of the tallest tower, across to
   the free block nearest the tower, down to 8 cm above it; at most 80 env steps), after which the policy takes over;
   and the same move plus the script's grasp of that block, lifted to carrying height before the hand-over. Per
   branch: whether that block was lifted, whether it ended on the tallest tower, the tower's change. A policy that
   brings the block home once it is put next to it lacks only the trip out; one that brings it home only when it is
   handed the block lacks the pick-up there too. With
   --nudge-probe-actor prior the branches run the run's frozen prior instead: would exploration find the block there?
    python benchmarks/block_stacking.py --view-limited-script 20
10. (only this) can a policy that sees only what ours sees, and remembers nothing, stack the row? A scripted
   controller that decides from the frames' content alone (the blocks inside the 0.48 m window around the gripper,
   the wall when it is in the window, whether a block is in the fingers; no memory, no absolute position) with one
   landmark rule: the tower goes on the block by the left wall; holding a block it travels left until the wall is in
   view and puts the block on the column nearest the wall; empty-handed it takes the nearest free block in view, or
   travels right until one is. 1000-step episodes in the 11-block row (reset seeds from --seed): blocks stacked at the
   end and at the best, and the authors' dense return; once with the visible blocks' exact positions, once with them
   rounded to the frames' pixel (1.5 cm).
"""

import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import block_stacking as bs  # noqa: E402


@dataclass
class Args:
    episodes: int = 100
    """scripted episodes per env"""
    num_steps: int = 3000
    """env steps to time per speed configuration"""
    tower_episodes: int = 20
    """episodes of the tower-building reference in the 11-block env"""
    seed: int = 0
    """seed of the policy, the layouts and the random actions"""
    prior_rollouts: Optional[str] = None
    """a block-stacking skill model (spirl_vae.py --env block_stacking): measure only its prior's rollouts"""
    prior_episodes: int = 20
    """--prior-rollouts: 1000-step episodes of prior skills"""
    prior_num_blocks: int = 11
    """--prior-rollouts: blocks in the downstream env (11: spirl_sac.py --explore prior itself; fewer: states padded to 11 slots)"""
    prior_mean_skill: bool = False
    """--prior-rollouts: execute the prior's mean skill instead of a sample (does the prior's centre stack?)"""
    policy_rollouts: Optional[str] = None
    """a spirl_sac.py checkpoint of block stacking: measure only its policy's episodes (spirl_sac.py --evaluate)"""
    policy_episodes: int = 4
    """--policy-rollouts: evaluation episodes (written next to the checkpoint as <checkpoint>_evaluate.npz)"""
    data_skills: Optional[str] = None
    """an open-loop block-stacking skill model: measure only how the scripted data policy stacks through it (item 5)"""
    data_skill_episodes: int = 6
    """--data-skills: 1000-step episodes in the 11-block row, each run raw and autoencoded"""
    data_skill_script: str = "chain"
    """--data-skills: the data policy, as `python -m envs.block_stacking --script` names it: "chain" (the default
    data's 3 consecutive stacks) or "view-limited" (ViewLimitedStacker, until it finishes)"""
    scripted_return: int = 0
    """> 0: measure only the scripted policies' return in this many 1000-step episodes of the row (item 6)"""
    critic_probe: Optional[str] = None
    """a spirl_sac.py checkpoint of block stacking: measure only its critics at its policy's idle states (item 7)"""
    critic_probe_episodes: int = 4
    """--critic-probe: policy episodes (reset seeds 10 001 on, those of spirl_sac.py's evaluation)"""
    view_limited_script: int = 0
    """> 0: measure only the view-limited memoryless scripted controller in this many 1000-step episodes of the row (item 10)"""
    nudge_probe: Optional[str] = None
    """a spirl_sac.py checkpoint of block stacking: measure only whether its policy brings a block home once a scripted
    move puts the gripper above it (item 9)"""
    nudge_probe_episodes: int = 8
    """--nudge-probe: policy episodes (reset seeds 10 001 on, those of spirl_sac.py's evaluation)"""
    nudge_probe_actor: str = "policy"
    """--nudge-probe: whose skills run the two branches from the idle state: policy, or prior (the run's frozen prior)"""
    carry_destinations: Optional[str] = None
    """a block-stacking dataset (envs/block_stacking.py's HDF5): measure only where its carries end, seen from the
    pick-up (item 8; --prior-rollouts and --policy-rollouts print the same line for their episodes)"""
    policy_half_width: Optional[float] = None
    """--policy-rollouts: run the episodes on a table of this half width (m) instead of the row's 0.9, the blocks where
    they always are; the frames show the wall only beyond it (does the policy steer by the walls?)"""
    policy_drawn_half_width: Optional[float] = None
    """--policy-rollouts: draw the walls in the policy's frames at this |x| (m), the physics unchanged (do the walls
    it sees, or the stop it meets, guide it?)"""
    policy_plot: Optional[str] = None
    """--policy-rollouts: also draw the policy's paths to this PNG: per episode the gripper's x over the steps, the
    carries (a block held >= 5 steps) drawn thick, the tallest tower's x and the gripper's reach"""


def stacked_and_lifted(env, states):
    """Per state of an episode: blocks_stacked (int) and whether a block is held in the air (bool)."""
    info = [env.task_info(s) for s in states]
    return np.array([i["blocks_stacked"] for i in info]), np.array([i["lifted"] for i in info])


def prior_rollouts(skill_model, episodes, seed):
    """Per-episode figures of skills sampled from the prior in the downstream env (spirl_sac.py --explore prior)."""
    import tempfile

    import spirl_sac

    env = bs.make_env(seed=seed, image_obs=False)
    with tempfile.TemporaryDirectory() as run_dir:
        out = spirl_sac.main(spirl_sac.Args(env="block_stacking", explore="prior", skill_model=skill_model, seed=seed,
                                            total_env_steps=episodes * env.max_episode_steps, run_dir=run_dir))
        with np.load(out["path"]) as saved:
            states, starts = saved["states"], saved["episode_starts"]
    # states holds each episode's reset state followed by its env steps' states
    episodes_states = np.split(states, starts[1:] + np.arange(1, len(starts)))
    rows = []
    for ep in episodes_states:
        stacked, lifted = stacked_and_lifted(env, ep)
        rows.append({"final": int(stacked[-1]), "best": int(stacked.max()), "destinations": carry_destinations(ep),
                     "fetches": fetches_after_release(ep),
                     "lifted": float(lifted.mean()), "on_block": float(np.mean(stacked > 0))})
    return rows


def decoded_prior_rollouts(skill_model, episodes, seed, num_blocks, mean_skill=False):
    """prior_rollouts with the skills chosen here: z ~ p_a(z|s), or with ``mean_skill`` the prior's mean skill
    (SKILL_RANGE * tanh(mu), as spirl_sac.py --eval-deterministic takes the policy's), decoded and executed with
    spirl_sac's own execute_skill in a ``num_blocks``-block downstream env whose states are padded to the 11 slots
    the skill model knows (the data's layout). ``skill_model``: a checkpoint path or dict (spirl_vae.py). The
    per-step measures come from the env's info."""
    import torch

    import spirl_sac

    torch.set_num_threads(1)  # as spirl_sac.py: tiny networks, and no threads spinning on a shared box
    ckpt = spirl_sac.read_skill_model(skill_model, "block_stacking") if isinstance(skill_model, str) else skill_model
    decoder, prior, meta = spirl_sac.build_skill_model(ckpt, "block_stacking", bs.make_env(seed=seed))
    env = bs.make_env(seed=seed, num_blocks=num_blocks)
    mean, std = np.asarray(meta["state_mean"], np.float32), np.asarray(meta["state_std"], np.float32)
    infos = []  # the current episode's per-step infos

    def padded(obs):
        return {**obs, "state": bs.pad_states(obs["state"][None], 11)[0]}

    def prior_input(obs):  # what the prior sees, as a batch of one (spirl_sac.py's policy_input)
        if meta["prior_input"] == "image":
            return torch.as_tensor(obs["image"]).unsqueeze(0)
        return torch.as_tensor((obs["state"] - mean) / std).unsqueeze(0)

    class Padded:  # the env as the skill model sees it; records every step's info
        def step(self, action):
            obs, reward, terminated, truncated, info = env.step(action)
            infos.append(info)
            return padded(obs), reward, terminated, truncated, info

    torch.manual_seed(seed)
    rows = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        obs, done = padded(obs), False
        infos.clear()
        while not done:
            with torch.no_grad():
                mu, log_sigma = prior(prior_input(obs))
                z = spirl_sac.SKILL_RANGE * torch.tanh(mu) if mean_skill else spirl_sac.squashed_sample(mu, log_sigma)
            obs, _, terminated, truncated, _, _, _ = spirl_sac.execute_skill(
                Padded(), obs, z[0].numpy(), decoder, meta["skill_horizon"], mean, std, np.asarray(meta["action_low"]),
                np.asarray(meta["action_high"]), bool(meta["state_conditioned_decoder"]))
            done = terminated or truncated
        stacked = np.array([i["blocks_stacked"] for i in infos])
        rows.append({"final": int(stacked[-1]), "best": int(stacked.max()),
                     "lifted": float(np.mean([i["lifted"] for i in infos])), "on_block": float(np.mean(stacked > 0))})
    return rows


def free_blocks_in_view(states):
    """Per state: (any free block inside the policy's view window, x distance from the gripper to the nearest
    free block, or inf). A free block stands on the table with nothing on it; blocks of the tallest tower and
    a held block are not free."""
    in_view, nearest = [], []
    for state in states:
        blocks = state[3:].reshape(-1, 3)
        free = (bs.tower_heights(blocks) == 1) & ~bs.covered_blocks(blocks)
        dx = np.abs(blocks[free, 0] - state[0])
        nearest.append(dx.min(initial=np.inf))
        in_view.append(bool((dx < bs.VIEW_W / 2).any()))
    return np.array(in_view), np.array(nearest)


def graspable_free_blocks(state, start_state):
    """(free blocks the open fingers can straddle, those of them still where the episode put them): a free block is
    graspable when every other block low enough to meet the fingers lies more than an open finger's outer face plus
    half a block away in x. Untouched blocks have never been lifted, so lifting one still earns its flag."""
    blocks, start = state[3:].reshape(-1, 3), start_state[3:].reshape(-1, 3)
    free = np.flatnonzero((bs.tower_heights(blocks) == 1) & ~bs.covered_blocks(blocks))
    clearance = bs.FINGER_OPEN + 2 * bs.FINGER_HALF_T + bs.HALF
    low = blocks[:, 1] - bs.HALF < bs.HALF + bs.FINGER_TOP  # its bottom below the fingers' top when they grasp a table block
    low_ids = np.flatnonzero(low)
    graspable = [i for i in free if (np.abs(blocks[low_ids[low_ids != i], 0] - blocks[i, 0]) > clearance).all()]
    untouched = [i for i in graspable if np.abs(blocks[i, :2] - start[i, :2]).max() < 0.01]
    return len(graspable), len(untouched)


def parked_low(states):
    """Per state: the gripper is low (below 4 cm) and no block centre lies within 5 cm of it in x, i.e. it is down on
    the table beside the blocks, not around one. The default data never show it; trained policies sit there."""
    states = np.asarray(states)
    nearest = np.abs(states[:, 3::3] - states[:, :1]).min(axis=1)
    return (states[:, 1] < 0.04) & (nearest > 0.05)


def carries(states, include_unfinished=False):
    """The episode's carries: (first step, last step, block, x where it was picked, x where it was let go), one per
    run of consecutive steps in which the same block is held in the air; a block still held at the last state counts
    only with ``include_unfinished`` (then its last step is the episode's)."""
    out, held_before, start = [], None, 0
    for t, state in enumerate([*states, None] if include_unfinished else states):
        if state is None:  # past the end: whatever is held is let go here
            held = None
        else:
            blocks = state[3:].reshape(-1, 3)
            held = np.flatnonzero(bs.BlockStackingEnv._lifted_blocks(state, bs.tower_heights(blocks)))
            held = int(held[0]) if len(held) else None
        if held != held_before:
            if held_before is not None:
                out.append((start, t - 1, held_before, float(states[start][3 + 3 * held_before]),
                            float(states[t - 1][3 + 3 * held_before])))
            held_before, start = held, t
    return out


def carry_destinations(states, settle=10):
    """Where an episode's carries (a block held >= 5 steps) end, seen from where they began. Per carry: whether the
    block rests on another block ``settle`` steps after it is let go; if so, the x distance from the gripper at the
    pick-up to the block it rests on; the tallest tower standing at the pick-up (>= 2 blocks: the x distance from the
    gripper to its top block, else None); and whether the carry ended on that tower. The policy and the prior see a
    window VIEW_W wide around the gripper, so a destination more than VIEW_W / 2 away is out of their view when they
    pick the block up."""
    out = []
    for first, last, block, _, _ in carries(states):
        if last - first < 5:
            continue
        gripper_x, at_pick = states[first][0], states[first][3:].reshape(-1, 3)
        heights = bs.tower_heights(at_pick)  # the held block is unsupported: height 0, in no tower
        tower_x = float(at_pick[np.argmax(heights), 0]) if heights.max() >= 2 else None
        after = states[min(last + settle, len(states) - 1)][3:].reshape(-1, 3)
        after_heights = bs.tower_heights(after)
        landed = bool(after_heights[block] >= 2)
        below = np.flatnonzero(after_heights == after_heights[block] - 1)  # its supporter is the nearest of these in x
        dest_x = float(after[below[np.argmin(np.abs(after[below, 0] - after[block, 0]))], 0]) if landed else None
        out.append({"landed": landed, "dest_dx": None if dest_x is None else abs(dest_x - gripper_x),
                    "tower_dx": None if tower_x is None else abs(tower_x - gripper_x),
                    "on_tower": bool(landed and tower_x is not None and abs(dest_x - tower_x) < 1.5 * bs.HALF)})
    return out


def destinations_summary(records):
    """One line on carry_destinations' records of many episodes."""
    landed = [r for r in records if r["landed"]]
    towered = [r for r in records if r["tower_dx"] is not None]
    seen = [r for r in towered if r["tower_dx"] < bs.VIEW_W / 2]
    unseen = [r for r in towered if r["tower_dx"] >= bs.VIEW_W / 2]

    def share(part, whole):
        return f"{len(part)} / {len(whole)}" + (f" ({len(part) / len(whole):.2f})" if whole else "")

    dest = np.array([r["dest_dx"] for r in landed])
    return (f"{len(records)} carries (>= 5 steps); ended on another block {share(landed, records)}, of those the block "
            f"it rests on was in the {bs.VIEW_W} m view at the pick-up {share([r for r in landed if r['dest_dx'] < bs.VIEW_W / 2], landed)}"
            + (f", median {np.median(dest):.2f} m away" if len(dest) else "")
            + f"; a tower of >= 2 standing at the pick-up {share(towered, records)}: in view {share(seen, towered)}; "
            f"ended on it when it was in view {share([r for r in seen if r['on_tower']], seen)}, out of view "
            f"{share([r for r in unseen if r['on_tower']], unseen)}; ended on another block elsewhere "
            f"{share([r for r in towered if r['landed'] and not r['on_tower']], towered)}")


def fetches_after_release(states, settle=10, min_left=100):
    """What follows each let-go of an episode's carries (a block held >= 5 steps, let go with >= ``min_left`` steps of
    the episode still to come): whether a free block other than the one let go stood in the policy's view window
    ``settle`` steps after the release, whether the gripper picked up another block later in the episode (if so,
    that block's x distance from the gripper at the release), and how far in x from the release point the gripper got
    within the next ``min_left`` steps. A policy that only ever fetches what its frames show picks up nothing after a
    release with no free block in view."""
    out = []
    picked = [c for c in carries(states, include_unfinished=True) if c[1] - c[0] >= 5]
    for k, (first, last, block, _, _) in enumerate(picked):
        if len(states) - 1 - last < min_left:
            continue
        after = states[min(last + settle, len(states) - 1)]
        blocks = after[3:].reshape(-1, 3)
        free = (bs.tower_heights(blocks) == 1) & ~bs.covered_blocks(blocks)
        free[block] = False
        next_pick = next((c for c in picked[k + 1:] if c[2] != block), None)
        at_release = states[last]
        out.append({"free_in_view": bool((np.abs(blocks[free, 0] - after[0]) < bs.VIEW_W / 2).any()),
                    "next_dx": None if next_pick is None else abs(at_release[3 + 3 * next_pick[2]] - at_release[0]),
                    "reach": float(np.abs(states[last + 1:last + 1 + min_left, 0] - at_release[0]).max())})
    return out


def fetches_summary(records, settle=10, min_left=100):
    """One line on fetches_after_release's records of many episodes (``settle`` and ``min_left``: the values they
    were measured with, for the text)."""
    def part(rows):
        fetched = [r for r in rows if r["next_dx"] is not None]
        far = [r for r in fetched if r["next_dx"] >= bs.VIEW_W / 2]
        share = f" ({len(fetched) / len(rows):.2f})" if rows else ""
        return f"{len(rows)}, followed by another pick-up {len(fetched)}{share}, of a block out of view at the release {len(far)}"

    reach = np.array([r["reach"] for r in records])
    return (f"{len(records)} let-gos (carries >= 5 steps, >= {min_left} steps left); a free block in view {settle} steps later: "
            f"{part([r for r in records if r['free_in_view']])}; none in view: {part([r for r in records if not r['free_in_view']])}"
            + (f"; the gripper's farthest x from the let-go point in the next {min_left} steps: median {np.median(reach):.2f} m, "
               f"beyond the view's half width ({bs.VIEW_W / 2:.2f} m) in {np.mean(reach > bs.VIEW_W / 2):.2f}" if len(reach) else ""))


def plot_policy_paths(rows, x_limit, half_width, title, path):
    """One panel per episode: gripper x over the episode, carries thick, the tallest tower's x dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(rows), 4)
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((len(rows) + cols - 1) // cols)),
                             sharex=True, sharey=True, squeeze=False)
    for ax, (k, r) in zip(axes.ravel(), enumerate(rows)):
        ax.plot(r["gripper_x"], lw=0.6, color="0.5")
        for first, last, _, _, _ in r["carries"]:
            if last - first >= 5:
                ax.plot(range(first, last + 1), r["gripper_x"][first:last + 1], lw=2.2, color="tab:orange")
        ax.axhline(r["tower_x"], ls="--", lw=1, color="tab:blue")
        for y in (-x_limit, x_limit):
            ax.axhline(y, lw=0.8, color="tab:red")
        ax.set_ylim(-half_width, half_width)
        ax.set_title(f"episode {k}: end {r['final']}, best {r['best']}", fontsize=8)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("env step")
    for ax in axes[:, 0]:
        ax.set_ylabel("gripper x (m)")
    fig.suptitle(title + "\ngrey: gripper x; orange: carrying a block; blue dashed: tallest tower's x at its best; "
                 "red: the gripper's reach", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def reward_parts(env, states):
    """The episode's return split the way the authors' reward pays it (envs/block_stacking.py): lift flags (1 per
    step per block lifted once), delivery flags (2 per step per block once carried above another) and the tower's
    height (4 per block); how many blocks carry each flag at the end; and how many blocks rest on another block at the
    end without ever having been lifted (pushed up there, e.g. piled against a barrier). ``states``: the reset
    state, then one per env step, replayed through the env's own reward."""
    env._lifted_flags, env._delivered_flags = np.zeros((2, env.num_blocks), dtype=bool)
    parts = np.zeros(3)
    for state in states[1:]:
        reward = env._reward(state, bs.tower_heights(state[3:].reshape(-1, 3)))
        lift = bs.LIFTED_REWARD * (env._lifted_flags & ~env._delivered_flags).sum()
        delivery = bs.DELIVERED_REWARD * env._delivered_flags.sum()
        parts += (lift, delivery, reward - lift - delivery)
    on_another = bs.tower_heights(states[-1][3:].reshape(-1, 3)) >= 2
    return {"return_lift": float(parts[0]), "return_delivery": float(parts[1]), "return_height": float(parts[2]),
            "blocks_lifted_end": int(env._lifted_flags.sum()), "blocks_delivered_end": int(env._delivered_flags.sum()),
            "stacked_never_lifted_end": int((on_another & ~env._lifted_flags).sum())}


@contextlib.contextmanager
def other_table(half_width=None, drawn_half_width=None):
    """Inside: ``envs.make_env("block_stacking")`` (what spirl_sac.py builds) makes a table of ``half_width`` (None:
    the row's default) and every front view draws the walls at |x| = ``drawn_half_width`` (None: at the table's
    edge), the physics unchanged."""
    from unittest import mock

    import envs

    make_env, draw = envs.make_env, bs.draw_front_view
    with mock.patch.object(envs, "make_env", lambda name, **kw: make_env(name, half_width=half_width, **kw)), \
            mock.patch.object(bs, "draw_front_view", lambda *a, **kw: draw(*a[:5], drawn_half_width or a[5], **kw)):
        yield


def policy_rollouts(checkpoint, episodes, half_width=None, drawn_half_width=None):
    """Per-episode figures of a trained policy's evaluation episodes (spirl_sac.py --evaluate), and the policy's and
    prior's spread at the episodes' skill decisions (policy_and_prior_spread). ``half_width``: the table's, if not
    the row's default (spirl_sac.py's envs are built with it for these episodes); ``drawn_half_width``: where the
    frames draw the walls, if not at the table's edge."""
    import spirl_sac

    env = bs.make_env(seed=0, image_obs=False, half_width=half_width)
    with other_table(half_width, drawn_half_width):
        out = spirl_sac.main(spirl_sac.Args(evaluate=checkpoint, eval_episodes=episodes))
        with np.load(out["path"]) as saved:
            trajectories = [saved[key] for key in sorted(saved.files, key=lambda k: int(k.split("_")[-1]))]
        spread = policy_and_prior_spread(spirl_sac.load_sac_checkpoint(checkpoint, "--policy-rollouts"),
                                         trajectories, half_width)
    rows = []
    for states in trajectories:
        stacked, lifted = stacked_and_lifted(env, states)  # the reset state, then one per env step
        first_tower = int(np.argmax(stacked >= 2)) if (stacked >= 2).any() else None
        best_at = int(np.argmax(stacked == stacked.max()))  # first step with the episode's best tower
        in_view, nearest = free_blocks_in_view(states[best_at:])
        gripper_x = states[best_at:, 0]
        blocks_at_best = states[best_at][3:].reshape(-1, 3)
        tower_x = float(blocks_at_best[np.argmax(bs.tower_heights(blocks_at_best)), 0])  # its top block's x
        late = [c for c in carries(states) if c[0] > best_at and c[1] - c[0] >= 5]
        graspable_end, untouched_end = graspable_free_blocks(states[-1], states[0])
        rows.append({"gripper_x": states[:, 0], "carries": carries(states), "best_at": best_at,
                     "destinations": carry_destinations(states), "fetches": fetches_after_release(states),
                     "free_in_view_after_best": float(in_view.mean()),
                     "nearest_free_at_best": float(nearest[0]),
                     "gripper_x_span_after_best": float(gripper_x.max() - gripper_x.min()),
                     "tower_x": tower_x, "carries_after_best": len(late),
                     "carried_dx_after_best": [round(c[4] - c[3], 3) for c in late],
                     "let_go_from_tower_after_best": [round(c[4] - tower_x, 3) for c in late],
                     "graspable_free_end": graspable_end, "untouched_graspable_end": untouched_end,
                     "final": int(stacked[-1]), "best": int(stacked.max()), "first_3_block_tower": first_tower,
                     "lifted": float(lifted.mean()), "lifted_last_300": float(lifted[-300:].mean()),
                     "parked": float(parked_low(states).mean()),
                     "parked_second_half": float(parked_low(states[len(states) // 2:]).mean()),
                     "lifted_after_tower": float(lifted[first_tower:].mean()) if first_tower is not None else None,
                     **reward_parts(env, states)})
    return rows, spread


def snapshot(env):
    """Everything a BlockStackingEnv step depends on: MuJoCo's state, the reward flags, the frames, the step count."""
    data = env.data
    return (data.qpos.copy(), data.qvel.copy(), data.ctrl.copy(), data.act.copy(), data.time,
            env._lifted_flags.copy(), env._delivered_flags.copy(), [f.copy() for f in env._frames or []], env._t)


def restore(env, saved):
    """Put env back to a snapshot(); the next step then is the step it would have taken from there."""
    import mujoco

    data = env.data
    data.qpos[:], data.qvel[:], data.ctrl[:], data.act[:] = saved[:4]
    data.time = saved[4]
    env._lifted_flags, env._delivered_flags = saved[5].copy(), saved[6].copy()
    env._frames = [f.copy() for f in saved[7]] or None
    env._t = saved[8]
    mujoco.mj_forward(env.model, data)


def critic_probe(checkpoint, episodes, seed=10_001, min_stacked=1, idle_steps=100, candidates=6, follow_skills=12):
    """Item 7. Returns one row per probed state: the critics' Q of each candidate group and what the candidates
    realised in branch rollouts from a snapshot, and the correlation of the two over the state's candidates."""
    import torch

    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # after the repository root: its spirl_sac.py wins
    import q_bias
    import spirl_sac

    ckpt, run_args, env, decoder, prior, policy, critics, meta = q_bias.load(checkpoint)
    if run_args.env != "block_stacking":
        raise SystemExit(f"--critic-probe: {checkpoint} is a {run_args.env} run, not block_stacking")
    unwrapped, gamma = env.unwrapped, run_args.gamma
    mean, std = np.asarray(meta["state_mean"], np.float32), np.asarray(meta["state_std"], np.float32)
    low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    image_prior = meta["image_shape"] is not None
    generator = torch.Generator().manual_seed(0)

    def seen(obs):  # what the policy and the prior see, a batch of one
        return (torch.as_tensor(obs["image"]) if image_prior else torch.as_tensor((obs["state"] - mean) / std)).unsqueeze(0)

    def sample(net, obs, n):
        with torch.no_grad():
            mu, log_sigma = net(seen(obs))
            return spirl_sac.squashed_sample(mu.expand(n, -1), log_sigma.expand(n, -1), generator)

    def min_q(obs, skills):  # the critics' input: the normalised state, and the reward flags if the run gave them
        flags = unwrapped.reward_flags() if run_args.critic_reward_flags else np.zeros(0, np.float32)
        critic_obs = torch.as_tensor(np.concatenate([(obs["state"] - mean) / std, flags])).expand(len(skills), -1)
        with torch.no_grad():
            return torch.min(critics[0](critic_obs, skills), critics[1](critic_obs, skills)).numpy()

    def run(obs, z):
        return spirl_sac.execute_skill(env, obs, z, decoder, meta["skill_horizon"], mean, std, low, high,
                                       bool(meta["state_conditioned_decoder"]))

    def branch(obs, z):
        """The realised return of skill z then follow_skills of the policy's, from obs; env put back afterwards."""
        saved, lifted_before = snapshot(unwrapped), int(unwrapped._lifted_flags.sum())
        obs, reward, terminated, truncated, info, _, _ = run(obs, z)
        realised, discount = reward, 1.0
        for _ in range(follow_skills):
            if terminated or truncated:
                break
            discount *= gamma
            obs, reward, terminated, truncated, info, _, _ = run(obs, sample(policy, obs, 1)[0].numpy())
            realised += discount * reward
        if not (terminated or truncated):
            realised += discount * gamma * float(min_q(obs, sample(policy, obs, 1))[0])
        result = (realised, int(unwrapped._lifted_flags.sum()) > lifted_before, info["blocks_stacked"])
        restore(unwrapped, saved)
        return result

    rows = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        t, last_lift, best = 0, 0, 0
        while True:
            stacked = unwrapped.task_info(obs["state"])["blocks_stacked"]
            best = max(best, stacked)
            if best >= min_stacked and t - last_lift >= idle_steps and t <= 850:
                prior_skills = sample(prior, obs, 256)
                groups = {"policy": sample(policy, obs, candidates),
                          "prior, top Q": prior_skills[np.argsort(min_q(obs, prior_skills))[-candidates:]],
                          "prior": prior_skills[:candidates]}
                row = {"episode": episode, "step": t, "blocks_stacked": int(stacked),
                       "q_policy_mean": float(min_q(obs, sample(policy, obs, 64)).mean())}
                all_q, all_realised = [], []
                for name, skills in groups.items():
                    q = min_q(obs, skills)
                    outcome = np.array([branch(obs, z.numpy()) for z in skills], dtype=float)  # (candidates, 3)
                    row[name] = {"q": float(q.mean()), "realised": float(outcome[:, 0].mean()),
                                 "new_lift": float(outcome[:, 1].mean()), "stacked_change": float(outcome[:, 2].mean() - stacked)}
                    all_q.append(q), all_realised.append(outcome[:, 0])
                row["corr_q_realised"] = float(np.corrcoef(np.concatenate(all_q), np.concatenate(all_realised))[0, 1])
                rows.append(row)
                last_lift = t - idle_steps + 50  # the next probe at least 50 steps later
            obs, _, terminated, truncated, info, n, visited = run(obs, sample(policy, obs, 1)[0].numpy())
            t += n
            if any(unwrapped.task_info(state)["lifted"] for state in visited):
                last_lift = t
            if terminated or truncated:
                break
    return rows


def tallest(state):
    """(x of the tallest tower's top block, its height in blocks) in a state of the env."""
    blocks = state[3:].reshape(-1, 3)
    heights = bs.tower_heights(blocks)
    return float(blocks[np.argmax(heights), 0]), int(heights.max())


def nudge_outcome(start_state, states, target):
    """--nudge-probe, one branch (``states``: every state after ``start_state``): was block ``target`` lifted, did it end
    on top of a tower taller than the tallest one at the start (it extended that tower), the tallest tower's change,
    where the gripper ended relative to the start's tower, and the share of steps the gripper spent within 5 cm of the
    block's start x (and how low it went there)."""
    height_start = tallest(start_state)[1]
    lifted = any(bs.BlockStackingEnv._lifted_blocks(s, bs.tower_heights(s[3:].reshape(-1, 3)))[target]
                 for s in states)
    on_tower = bs.tower_heights(states[-1][3:].reshape(-1, 3))[target] > height_start
    gripper = np.array([s[:2] for s in states])
    near = np.abs(gripper[:, 0] - start_state[3 + 3 * target]) < 0.05  # within 5 cm of the block's x
    return {"lifted": bool(lifted), "on_tower": bool(on_tower), "tower_change": tallest(states[-1])[1] - height_start,
            "gripper_from_tower_end": float(gripper[-1, 0] - tallest(start_state)[0]),
            "near_block": float(near.mean()), "lowest_near_block": float(gripper[near, 1].min(initial=np.inf))}


def move_gripper(env, obs, waypoints, max_steps, waypoint_limit=None):
    """Scripted carriage moves: to each waypoint (x, z, grip, tolerance, hold) in turn, straight at up to full speed
    with the fingers at ``grip`` (1 open, 0 closed), until within ``tolerance`` of (x, z), then ``hold`` more steps
    there; at most ``max_steps`` env steps in all, a waypoint given up after ``waypoint_limit`` steps, and none past
    the episode's end. Returns the last observation, the state after every step, the summed reward and whether the
    episode was truncated."""
    moved, total, truncated = [], 0.0, False
    for x, z, grip, tolerance, hold in waypoints:
        held = steps = 0
        while not truncated and len(moved) < max_steps and held <= hold and steps != waypoint_limit:
            delta = np.array([x, z]) - obs["state"][:2]
            if np.abs(delta).max() < tolerance:
                if held == hold:
                    break
                held += 1
            obs, reward, _, truncated, _ = env.step(np.array([*np.clip(delta / bs.STEP_SCALE, -1, 1), grip], np.float32))
            moved.append(obs["state"])
            total, steps = total + float(reward), steps + 1
    return obs, moved, total, truncated


def nudge_probe(checkpoint, episodes, seed=10_001, idle_steps=100, follow_steps=300, max_move_steps=80, actor="policy"):
    """Item 9. One row per episode whose policy stood idle by a tower: the three branches' outcomes (control: the
    actor alone; nudged: a scripted move to above the free block nearest the tower, then the actor; grasped: the same
    move and the script's grasp of that block, then the actor). ``actor``: whose
    skills the branches run, "policy" or the run's frozen "prior" (the episode up to the idle state is the policy's)."""
    import torch

    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # after the repository root: its spirl_sac.py wins
    import q_bias
    import spirl_sac

    _, run_args, env, decoder, prior, policy, _, meta = q_bias.load(checkpoint)
    if run_args.env != "block_stacking":
        raise SystemExit(f"--nudge-probe: {checkpoint} is a {run_args.env} run, not block_stacking")
    unwrapped = env.unwrapped
    mean, std = np.asarray(meta["state_mean"], np.float32), np.asarray(meta["state_std"], np.float32)
    low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    image_prior = meta["image_shape"] is not None
    generator = torch.Generator().manual_seed(0)

    def sampled_skill(net, obs):
        seen = torch.as_tensor(obs["image"]) if image_prior else torch.as_tensor((obs["state"] - mean) / std)
        with torch.no_grad():
            mu, log_sigma = net(seen.unsqueeze(0))
            return spirl_sac.squashed_sample(mu, log_sigma, generator)[0].numpy()

    def run_policy(obs, steps, net=policy):
        """``net``'s skills for at least ``steps`` env steps; returns the last obs and every state visited."""
        visited, done = [], False
        while len(visited) < steps and not done:
            obs, _, terminated, truncated, _, _, states = spirl_sac.execute_skill(
                env, obs, sampled_skill(net, obs), decoder, meta["skill_horizon"], mean, std, low, high,
                bool(meta["state_conditioned_decoder"]))
            visited += list(states)
            done = terminated or truncated
        return obs, visited

    rows = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        t, last_lift = 0, 0
        while t <= 1000 - follow_steps - max_move_steps:
            state = obs["state"]
            tower_x, height = tallest(state)
            if height >= 2 and t - last_lift >= idle_steps:
                break
            obs, visited = run_policy(obs, 1)
            t += len(visited)
            if any(unwrapped.task_info(s)["lifted"] for s in visited):
                last_lift = t
        else:
            continue  # never idle by a tower early enough for both branches
        blocks = state[3:].reshape(-1, 3)
        free = np.flatnonzero((bs.tower_heights(blocks) == 1) & ~bs.covered_blocks(blocks))
        target = int(free[np.argmin(np.abs(blocks[free, 0] - tower_x))])
        saved, saved_obs = snapshot(unwrapped), obs
        branch_net = {"policy": policy, "prior": prior}[actor]
        _, control = run_policy(obs, follow_steps, branch_net)
        control = nudge_outcome(state, control, target)
        restore(unwrapped, saved)
        # the scripted move: fingers open, up to a height clear of the tower, across, then down to 8 cm above the
        # target block's top (the view then shows it as the data's descents onto a block do)
        bx, safe_z = float(blocks[target, 0]), max(float(state[1]), (height + 1.5) * 2 * bs.HALF + 0.05)
        above = [(float(state[0]), safe_z, 1.0, 0.01, 0), (bx, safe_z, 1.0, 0.01, 0), (bx, 2 * bs.HALF + 0.08, 1.0, 0.01, 0)]
        obs, moved, *_ = move_gripper(env, obs, above, max_move_steps)
        _, nudged = run_policy(obs, follow_steps, branch_net)
        nudged = nudge_outcome(state, moved + nudged, target)
        restore(unwrapped, saved)
        # the same move, then the script's grasp (down to the block, close for 6 steps, up to carrying height over the
        # tower): the block is in the fingers when the actor takes over
        grasp = above[:2] + [(bx, bs.HALF, 1.0, 0.004, 0), (bx, bs.HALF, 0.0, 0.004, 6), (bx, safe_z, 0.0, 0.02, 0)]
        obs, moved_holding, *_ = move_gripper(env, saved_obs, grasp, 2 * max_move_steps)
        holding = bool(bs.BlockStackingEnv._lifted_blocks(obs["state"], bs.tower_heights(obs["state"][3:].reshape(-1, 3)))[target])
        _, grasped = run_policy(obs, follow_steps, branch_net)
        grasped = {**nudge_outcome(state, moved_holding + grasped, target), "holding_at_handover": holding}
        rows.append({"episode": episode, "step": t, "height": height, "tower_x": tower_x,
                     "target_dx": float(blocks[target, 0] - tower_x), "gripper_dx": float(state[0] - tower_x),
                     "move_steps": len(moved), "control": control, "nudged": nudged, "grasped": grasped})
    return rows


def view_limited_episodes(episodes, seed, waypoint_limit=60, pixel=None):
    """Item 10: 1000-step episodes of the view_limited_plan controller (envs/block_stacking.py) in the 11-block row (a
    waypoint is given up after ``waypoint_limit`` steps); per episode blocks_stacked at the end and at its best, and the
    return."""
    env = bs.make_env(seed=seed, image_obs=False)
    rows = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        states, total, truncated = [obs["state"]], 0.0, False
        while not truncated:
            obs, moved, reward, truncated = move_gripper(env, obs, bs.view_limited_plan(obs["state"], env.half_width, pixel),
                                                               env.max_episode_steps, waypoint_limit)
            total += reward
            states += moved
        stacked = [env.task_info(state)["blocks_stacked"] for state in states[1:]]
        rows.append({"final": int(stacked[-1]), "best": int(max(stacked)), "return": float(total),
                     "fetches": fetches_after_release(np.array(states))})
    return rows


def decision_images(env, states, horizon):
    """The policy's inputs at an episode's skill decisions, re-drawn from its low-dim states (the reset state, then
    one per env step): at every H-th state the two stacked front views (previous step's, current), oldest first,
    the reset's view twice, as the env's observations hold them. (n_decisions, 6, 32, 32) uint8."""
    frames = [env._frame(state) for state in states]
    return np.stack([np.concatenate([frames[max(t - 1, 0)], frames[t]]) for t in range(0, len(states) - 1, horizon)])


def policy_and_prior_spread(saved, trajectories, half_width=None):
    """At every skill decision of the episodes (``trajectories``: each episode's states, as --evaluate saves them)
    the spread of a spirl_sac.py checkpoint's policy and of its skill model's prior: sigma of each pre-tanh
    Gaussian (mean over latent dims) and KL(pi || p_a) summed over latent dims, the divergence delta bounds.
    ``saved``: the checkpoint's dict; ``half_width``: the episodes' table, if not the row's default. Returns
    per-decision arrays."""
    import torch

    import spirl_sac

    env = bs.make_env(seed=0, half_width=half_width)
    _, prior, meta = spirl_sac.build_skill_model(saved["skill_model"], "block_stacking", env)
    if meta["prior_input"] != "image":
        raise SystemExit("--policy-rollouts: the spread is measured for image priors (the block-stacking default)")
    policy = spirl_sac.make_policy(prior, meta, prior_init=False)
    policy.load_state_dict(saved["policy"])
    images = torch.as_tensor(np.concatenate([decision_images(env, t, meta["skill_horizon"]) for t in trajectories]))
    with torch.no_grad():
        mu_pi, log_sigma_pi = policy(images)
        mu_p, log_sigma_p = prior(images)
        kl = spirl_sac.gaussian_kl(mu_pi, log_sigma_pi, mu_p, log_sigma_p).sum(-1)
    return {"policy_sigma": log_sigma_pi.exp().mean(-1).numpy(), "prior_sigma": log_sigma_p.exp().mean(-1).numpy(),
            "kl_sum": kl.numpy()}


def data_skills(skill_model, episodes, seed, script="chain"):
    """Item 5: per mode ("raw", "autoencoded") the scripted data policy's blocks_stacked at each episode's end and
    best, and for "autoencoded" the mean |decoded - planned| action per action dim. ``skill_model``: a checkpoint
    path or dict of an open-loop model (spirl_vae.py); ``script``: "chain" (ScriptedStacker, 3 stacks) or
    "view-limited" (ViewLimitedStacker)."""
    import copy

    import torch

    import spirl_vae

    ckpt = torch.load(skill_model, map_location="cpu", weights_only=False) if isinstance(skill_model, str) else skill_model
    if ckpt["state_conditioned_decoder"]:
        raise SystemExit("--data-skills: an open-loop skill model is needed (this one decodes closed loop)")
    model = spirl_vae.build_model(ckpt).eval()
    horizon, low, high = ckpt["skill_horizon"], ckpt["action_low"], ckpt["action_high"]
    if script not in ("chain", "view-limited"):
        raise SystemExit(f"--data-skill-script: 'chain' or 'view-limited', not {script!r}")
    out = {}
    for mode in ("raw", "autoencoded"):
        rng = np.random.default_rng(seed)  # the same episodes and the same script noise in both modes
        env = bs.make_env(seed=seed, image_obs=False)
        finals, bests, errors = [], [], []
        for _ in range(episodes):
            obs, info = env.reset(seed=int(rng.integers(2**31)))
            policy = bs.ScriptedStacker(env, rng, num_stacks=3) if script == "chain" else bs.ViewLimitedStacker(env, rng)
            best, steps = 0, 0
            while steps < env.max_episode_steps and not policy.done():
                sim, planner, plan, planned_obs = copy.deepcopy(env), copy.deepcopy(policy), [], obs
                for _ in range(horizon):  # the script's next H actions, planned on a copy of the env
                    action = planner.act(planned_obs["state"])
                    if planner.done():
                        break
                    plan.append(action)
                    planned_obs = sim.step(action)[0]
                if not plan:
                    break
                plan = np.array(plan, np.float32)  # (h <= H, 3)
                run = plan
                if mode == "autoencoded":
                    with torch.no_grad():
                        actions = torch.as_tensor(plan)[None]  # (1, h, 3); a short last chunk repeats its last action
                        actions = torch.cat([actions, actions[:, -1:].expand(1, horizon - len(plan), 3)], dim=1)
                        mu, _ = model.encoder(actions)
                        decoded = model.decoder.decode(mu, None, horizon=horizon)[0, : len(plan)].numpy()
                    errors.append(np.abs(decoded - plan).mean(0))
                    run = np.clip(decoded, low, high)
                for action in run:
                    obs, _, _, _, info = env.step(action)
                    steps += 1
                    best = max(best, info["blocks_stacked"])
                policy = planner  # the script goes on from where its plan left it
            finals.append(info["blocks_stacked"])
            bests.append(best)
        out[mode] = {"final": finals, "best": bests, "error": np.mean(errors, 0) if errors else None}
    return out


def scripted_returns(episodes, seed, **stacker_kwargs):
    """Item 6: per episode the return of ``ScriptedStacker(**stacker_kwargs)`` over 1000 steps of the row (still
    with open fingers once it is done) and its reward_parts, with blocks_stacked at the end."""
    env, rng, rows = bs.make_env(seed=seed, image_obs=False), np.random.default_rng(seed), []
    for _ in range(episodes):
        obs, info = env.reset(seed=int(rng.integers(2**31)))
        policy, states, total = bs.ScriptedStacker(env, rng, **stacker_kwargs), [obs["state"]], 0.0
        terminated = truncated = False
        while not (terminated or truncated):
            action = None if policy.done() else policy.act(obs["state"])
            if policy.done():  # the script is through (now or before): stay where it is, fingers open
                action = np.array([0.0, 0.0, 1.0], np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            states.append(obs["state"])
        rows.append({"return": total, "final": info["blocks_stacked"], **reward_parts(env, np.array(states))})
    return rows


def scripted_quality(env, episodes, seed):
    rng = np.random.default_rng(seed)
    outcomes, first_stack, heights, lengths = [], [], [], []
    for _ in range(episodes):
        traj = bs.collect_trajectory(env, rng, max_steps=env.max_episode_steps)  # 1000: no stack cut off
        outcomes += traj["stack_outcomes"]
        first_stack.append(traj["stack_outcomes"][0])
        heights.append(traj["info"]["blocks_stacked"])
        lengths.append(len(traj["actions"]))
    heights = np.array(heights)
    return {"stack_success": np.mean(outcomes), "attempts": len(outcomes), "first_stack": np.mean(first_stack),
            "blocks_stacked": heights.mean(), "tower": heights.mean() + 1, "max_tower": heights.max() + 1,
            "length": np.mean(lengths)}


def tower_reference(env, episodes, seed):
    """Highest tower (blocks_stacked) the scripted policy builds in one episode when it always
    stacks onto the highest tower."""
    rng = np.random.default_rng(seed)
    heights = []
    for _ in range(episodes):
        obs, info = env.reset(seed=int(rng.integers(2**31)))
        policy = bs.ScriptedStacker(env, rng, num_stacks=10, build_tower=True)
        for _ in range(env.max_episode_steps):
            action = policy.act(obs["state"])
            if policy.done():
                break
            obs, _, _, _, info = env.step(action)
        heights.append(info["blocks_stacked"])
    return np.array(heights)


def steps_per_s(env, num_steps, seed):
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(num_steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(env.action_space.low, env.action_space.high))
        if terminated or truncated:
            env.reset()
    return num_steps / (time.perf_counter() - start), num_steps / (time.process_time() - start_cpu)


if __name__ == "__main__":
    args = tyro.cli(Args)
    import mujoco

    print(f"python {platform.python_version()}, mujoco {mujoco.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, seed {args.seed}")
    if args.prior_rollouts:
        start = time.perf_counter()
        if args.prior_num_blocks == 11 and not args.prior_mean_skill:
            rows = prior_rollouts(args.prior_rollouts, args.prior_episodes, args.seed)
        else:
            rows = decoded_prior_rollouts(args.prior_rollouts, args.prior_episodes, args.seed, args.prior_num_blocks,
                                          args.prior_mean_skill)
        final, best = np.array([r["final"] for r in rows]), np.array([r["best"] for r in rows])
        print(f"prior rollouts of {args.prior_rollouts} ({'mean' if args.prior_mean_skill else 'sampled'} skills), {len(rows)} episodes "
              f"of 1000 steps, {args.prior_num_blocks} blocks: blocks_stacked at "
              f"the end {final.mean():.2f} (max {final.max()}), best during the episode {best.mean():.2f} (max {best.max()}); "
              f"episodes with any stack {np.mean(best > 0):.2f}; steps with a block lifted "
              f"{np.mean([r['lifted'] for r in rows]):.3f}, with a block on another {np.mean([r['on_block'] for r in rows]):.3f}; "
              f"{time.perf_counter() - start:.0f} s")
        if "destinations" in rows[0]:
            print("where the prior's carries end: " + destinations_summary(sum((r["destinations"] for r in rows), [])))
            print("what follows the prior's let-gos: " + fetches_summary(sum((r["fetches"] for r in rows), [])))
        sys.exit(0)
    if args.carry_destinations:
        import h5py

        with h5py.File(args.carry_destinations, "r") as f:
            states, ends = f["states"][:], np.flatnonzero(f["timeouts"][:])
        trajectories = [states[s:e] for s, e in zip(np.r_[0, ends[:-1] + 1], ends + 1)]
        records = sum((carry_destinations(t) for t in trajectories), [])
        print(f"where the carries of {args.carry_destinations} ({len(ends)} trajectories, "
              f"{(states.shape[1] - 3) // 3} blocks) end: " + destinations_summary(records))
        print("what follows their let-gos: " + fetches_summary(sum((fetches_after_release(t) for t in trajectories), [])))
        sys.exit(0)
    if args.view_limited_script > 0:
        for pixel in (None, bs.VIEW_W / 32):
            start = time.perf_counter()
            rows = view_limited_episodes(args.view_limited_script, args.seed, pixel=pixel)
            final, best = np.array([r["final"] for r in rows]), np.array([r["best"] for r in rows])
            print(f"view-limited memoryless controller, block positions {'exact' if pixel is None else f'to {pixel * 100:.1f} cm'}, "
                  f"{len(rows)} episodes of the row: blocks_stacked at the end {final.mean():.2f} {final.tolist()}, best "
                  f"{best.mean():.2f}; dense-reward return {np.mean([r['return'] for r in rows]):.0f}; "
                  f"{time.perf_counter() - start:.0f} s")
            print("  what follows its let-gos: " + fetches_summary(sum((r["fetches"] for r in rows), [])))
        sys.exit(0)
    if args.nudge_probe:
        start = time.perf_counter()
        if args.nudge_probe_actor not in ("policy", "prior"):
            raise SystemExit(f"--nudge-probe-actor: 'policy' or 'prior', not {args.nudge_probe_actor!r}")
        rows = nudge_probe(args.nudge_probe, args.nudge_probe_episodes, actor=args.nudge_probe_actor)
        if not rows:
            raise SystemExit(f"--nudge-probe: the policy of {args.nudge_probe} never stood idle by a tower of 2 or more "
                             f"blocks early enough in {args.nudge_probe_episodes} episodes; nothing to probe")
        for r in rows:
            print(f"episode {r['episode']}: idle by a {r['height']}-block tower at x = {r['tower_x']:.2f} m from step "
                  f"{r['step']}, gripper {r['gripper_dx']:+.2f} m from it, nearest free block {r['target_dx']:+.2f} m; "
                  + "; ".join(f"{name}: block lifted {r[name]['lifted']}, on the tower {r[name]['on_tower']}, tower "
                              f"{r[name]['tower_change']:+d}, gripper within 5 cm of the block's x in "
                              f"{r[name]['near_block']:.2f} of the steps (lowest there {r[name]['lowest_near_block']:.2f} m), "
                              f"at the end {r[name]['gripper_from_tower_end']:+.2f} m from the tower" for name in ("control", "nudged", "grasped"))
                  + f" (moved in {r['move_steps']} steps; holding the block at the hand-over {r['grasped']['holding_at_handover']})")
        for name in ("control", "nudged", "grasped"):
            print(f"{name:8s} ({len(rows)} episodes, 300 env steps of the {args.nudge_probe_actor}'s skills after the idle state"
                  f"{dict(nudged=', after the scripted move', grasped=', after the scripted move and grasp').get(name, '')}): the nearest free block lifted in "
                  f"{np.mean([r[name]['lifted'] for r in rows]):.2f}, on the tower in {np.mean([r[name]['on_tower'] for r in rows]):.2f}, "
                  f"tower change {np.mean([r[name]['tower_change'] for r in rows]):+.2f}")
        print(f"{time.perf_counter() - start:.0f} s")
        sys.exit(0)
    if args.critic_probe:
        start = time.perf_counter()
        rows = critic_probe(args.critic_probe, args.critic_probe_episodes)
        if not rows:
            raise SystemExit(f"--critic-probe: the policy of {args.critic_probe} never stood idle by a tower in "
                             f"{args.critic_probe_episodes} episodes; nothing to probe")
        print(f"critics of {args.critic_probe} at {len(rows)} idle decision states of {args.critic_probe_episodes} "
              f"episodes (a tower stands, no block lifted for 100 steps); Q of the policy's skills there "
              f"{np.mean([r['q_policy_mean'] for r in rows]):.0f}")
        for name in ("policy", "prior, top Q", "prior"):
            print(f"  {name:12s}: Q - Q(policy) {np.mean([r[name]['q'] - r['q_policy_mean'] for r in rows]):+7.0f}, "
                  f"realised {np.mean([r[name]['realised'] for r in rows]):7.0f}, a new block lifted in "
                  f"{np.mean([r[name]['new_lift'] for r in rows]):.2f}, tower change {np.mean([r[name]['stacked_change'] for r in rows]):+.2f}")
        corr = np.array([r["corr_q_realised"] for r in rows])
        print(f"  correlation of Q and the realised return over each state's candidates: mean {np.nanmean(corr):+.2f} "
              f"(sd {np.nanstd(corr):.2f}); {time.perf_counter() - start:.0f} s")
        sys.exit(0)
    if args.scripted_return > 0:
        start = time.perf_counter()
        for name, kwargs in (("data policy (3 stacks)", {"num_stacks": 3}),
                             ("tower reference (stacks onto the tower until the end)", {"num_stacks": 10, "build_tower": True})):
            rows = scripted_returns(args.scripted_return, args.seed, **kwargs)
            mean = {key: np.mean([r[key] for r in rows]) for key in ("return", "return_lift", "return_delivery",
                                                                     "return_height", "final", "blocks_lifted_end")}
            print(f"{name}, {len(rows)} episodes of the row: return {mean['return']:.0f} = lift flags {mean['return_lift']:.0f} "
                  f"+ delivery flags {mean['return_delivery']:.0f} + height {mean['return_height']:.0f}; blocks_stacked at "
                  f"the end {mean['final']:.2f}; blocks lifted {mean['blocks_lifted_end']:.1f}")
        print(f"{time.perf_counter() - start:.0f} s")
        sys.exit(0)
    if args.data_skills:
        start = time.perf_counter()
        for mode, r in data_skills(args.data_skills, args.data_skill_episodes, args.seed, args.data_skill_script).items():
            error = "" if r["error"] is None else f"; mean |decoded - planned| per action dim {[round(float(e), 3) for e in r['error']]}"
            print(f"{args.data_skill_script} data policy through {args.data_skills}, {mode}, {len(r['final'])} episodes in the 11-block row: "
                  f"blocks_stacked at the end {np.mean(r['final']):.2f} {r['final']}, best {np.mean(r['best']):.2f}{error}")
        print(f"{time.perf_counter() - start:.0f} s")
        sys.exit(0)
    if args.policy_rollouts:
        start = time.perf_counter()
        rows, spread = policy_rollouts(args.policy_rollouts, args.policy_episodes, args.policy_half_width,
                                       args.policy_drawn_half_width)
        if args.policy_plot:
            env = bs.make_env(seed=0, image_obs=False, half_width=args.policy_half_width)
            plot_policy_paths(rows, env.x_limit, env.half_width, f"policy paths of {args.policy_rollouts}",
                              args.policy_plot)
        for k, r in enumerate(rows):
            after = "-" if r["lifted_after_tower"] is None else f"{r['lifted_after_tower']:.2f}"
            print(f"episode {k}: blocks_stacked at the end {r['final']}, best {r['best']}, first 3-block tower at step "
                  f"{r['first_3_block_tower']}; steps with a block lifted {r['lifted']:.2f}, after the first 3-block "
                  f"tower {after}, in the last 300 steps {r['lifted_last_300']:.2f}; gripper low beside the blocks "
                  f"{r['parked']:.2f} of the steps ({r['parked_second_half']:.2f} of the second half); from the best tower on (step "
                  f"{r['best_at']}): nearest free block {r['nearest_free_at_best']:.2f} m away in x, a free block in "
                  f"view {r['free_in_view_after_best']:.2f} of the steps, gripper x span {r['gripper_x_span_after_best']:.2f} m; "
                  f"tallest tower at x = {r['tower_x']:.2f} m; {r['carries_after_best']} carries (>= 5 steps) after it, "
                  f"moved by {r['carried_dx_after_best']} m and let go at {r['let_go_from_tower_after_best']} m from "
                  f"the tower's x; dense-reward return {r['return_lift'] + r['return_delivery'] + r['return_height']:.0f} = lift flags "
                  f"{r['return_lift']:.0f} + delivery flags {r['return_delivery']:.0f} + height {r['return_height']:.0f}, "
                  f"{r['blocks_lifted_end']} blocks lifted and {r['blocks_delivered_end']} delivered by the end, "
                  f"{r['stacked_never_lifted_end']} resting on another block without ever being lifted; at the end "
                  f"{r['graspable_free_end']} free blocks with room for the open fingers, {r['untouched_graspable_end']} of "
                  f"them never moved")
        final = np.array([r["final"] for r in rows])
        part = {key: np.mean([r[key] for r in rows]) for key in ("return_lift", "return_delivery", "return_height",
                                                                 "blocks_lifted_end", "blocks_delivered_end",
                                                                 "stacked_never_lifted_end", "parked", "parked_second_half",
                                                                 "graspable_free_end", "untouched_graspable_end")}
        table = "" if args.policy_half_width is None else f" on a table of half width {args.policy_half_width} m"
        table += "" if args.policy_drawn_half_width is None else f", walls drawn at |x| = {args.policy_drawn_half_width} m"
        print(f"policy {args.policy_rollouts}, {len(rows)} episodes{table}: blocks_stacked at the end {final.mean():.2f}; "
              f"mean dense-reward return from lift flags {part['return_lift']:.0f}, delivery flags {part['return_delivery']:.0f}, "
              f"height {part['return_height']:.0f}; blocks lifted {part['blocks_lifted_end']:.1f}, delivered "
              f"{part['blocks_delivered_end']:.1f} by the end; blocks resting on another without ever being lifted "
              f"{part['stacked_never_lifted_end']:.1f}; gripper low beside the blocks {part['parked']:.2f} of the steps "
              f"({part['parked_second_half']:.2f} of the second halves); free blocks with room for the open fingers at the "
              f"end {part['graspable_free_end']:.1f} ({part['untouched_graspable_end']:.1f} never moved); "
              f"{time.perf_counter() - start:.0f} s")
        print("where the policy's carries end: " + destinations_summary(sum((r["destinations"] for r in rows), [])))
        print("what follows the policy's let-gos: " + fetches_summary(sum((r["fetches"] for r in rows), [])))
        print(f"at its {len(spread['kl_sum'])} skill decisions: the policy's sigma {spread['policy_sigma'].mean():.2f} "
              f"(mean over latent dims, pre-tanh), the prior's {spread['prior_sigma'].mean():.2f}; KL(pi || p_a) summed over "
              f"latent dims {spread['kl_sum'].mean():.2f} (median {np.median(spread['kl_sum']):.2f})")
        sys.exit(0)
    envs_under_test = {"training env, 5 blocks (random stacks)": bs.training_env(image_obs=False),
                       "downstream env, 11 blocks (the row)": bs.BlockStackingEnv(num_blocks=11, layout_seed=None,
                                                                                       image_obs=False)}
    for name, env in envs_under_test.items():
        start = time.perf_counter()
        q = scripted_quality(env, args.episodes, args.seed)
        print(f"scripted policy, {name}, {args.episodes} episodes: single-stack success {q['stack_success']:.3f} "
              f"({q['attempts']} stacks; first stack of an episode {q['first_stack']:.3f}), final highest tower "
              f"{q['tower']:.2f} blocks (blocks_stacked {q['blocks_stacked']:.2f}, max {q['max_tower']}), "
              f"{q['length']:.0f} steps/episode, {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    heights = tower_reference(envs_under_test["downstream env, 11 blocks (the row)"], args.tower_episodes, args.seed)
    print(f"tower-building reference, 11 blocks, {args.tower_episodes} episodes of 1000 steps: blocks_stacked at the "
          f"end {heights.mean():.2f} (min {heights.min()}, max {heights.max()}), {time.perf_counter() - start:.0f} s")
    for num_blocks in (5, 11):
        for image_obs in (False, True):
            env = bs.make_env(seed=args.seed, num_blocks=num_blocks, image_obs=image_obs)
            sps, cpu_sps = steps_per_s(env, args.num_steps, args.seed)
            print(f"env steps/s, {num_blocks:2d} blocks, {'state + image' if image_obs else 'state only   '} obs: "
                  f"{sps:6.0f} per wall s, {cpu_sps:6.0f} per CPU s, over {args.num_steps} random-action steps")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
