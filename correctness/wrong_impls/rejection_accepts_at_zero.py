"""A rejection sampler that accepts whenever ``uniforms[i] <= target_p / draft_p`` read literally: at a uniform of
0 it accepts a draft token the target gives probability 0."""
import torch

from kernels import reference as _R


def rejection_sample(draft_token_ids, draft_probs, target_probs, bonus_token_ids, *, uniforms, recovery_noise,
                     num_draft_tokens):
    if draft_probs is None:
        return torch.from_numpy(_R.rejection_sample(draft_token_ids, None, target_probs, bonus_token_ids,
                                                    uniforms=uniforms, recovery_noise=recovery_noise,
                                                    num_draft_tokens=num_draft_tokens))
    ids = draft_token_ids.long().cpu()
    rows = torch.arange(ids.numel())
    accept = uniforms.double().cpu() * draft_probs.double().cpu()[rows, ids] <= target_probs.double().cpu()[rows, ids]
    out = torch.full((len(num_draft_tokens), max(num_draft_tokens, default=0) + 1), -1, dtype=torch.int64)
    target, draft, noise = target_probs.double().cpu(), draft_probs.double().cpu(), recovery_noise.double().cpu()
    start = 0
    for b, n in enumerate(num_draft_tokens):
        for i in range(n):
            t = start + i
            if accept[t]:
                out[b, i] = ids[t]
                continue
            out[b, i] = torch.argmax(torch.clamp(target[t] - draft[t], min=0) / noise[t])
            break
        else:
            out[b, n] = bonus_token_ids.reshape(-1)[b]
        start += n
    return out
