"""The original MSF formulation (UMBCvision/MSF `MeanShift`), re-stated independently of msf_fast.model:
original parameter names, per-parameter EMA at the start of forward, dense B x N distance matrices,
top-k on the full matrix. It is the tests' oracle and the step benchmark's baseline; no speed tricks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from msf_fast.ema import reference_ema_update


def _mlp(in_dim, hidden, out_dim):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class OriginalMeanShift(nn.Module):
    def __init__(self, arch="resnet18", m=0.99, mem_bank_size=128, topk=5):
        super().__init__()
        self.m, self.mem_bank_size, self.topk = m, mem_bank_size, topk
        self.encoder_q = torchvision.models.__dict__[arch]()
        self.encoder_t = torchvision.models.__dict__[arch]()
        feat_dim = self.encoder_q.fc.in_features
        hidden, proj = feat_dim * 2, feat_dim // 4
        self.encoder_q.fc = _mlp(feat_dim, hidden, proj)
        self.encoder_t.fc = _mlp(feat_dim, hidden, proj)
        self.predict_q = _mlp(proj, hidden, proj)
        for q, t in zip(self.encoder_q.parameters(), self.encoder_t.parameters()):
            t.data.copy_(q.data)
            t.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(mem_bank_size, proj), dim=1))
        self.register_buffer("labels", -torch.ones(mem_bank_size, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def forward(self, im_q, im_t, labels):
        query = F.normalize(self.predict_q(self.encoder_q(im_q)), dim=1)
        with torch.no_grad():
            reference_ema_update(self.encoder_q, self.encoder_t, self.m)
            target = F.normalize(self.encoder_t(im_t), dim=1)
            ptr = int(self.queue_ptr)
            self.queue[ptr:ptr + len(target)] = target
            self.labels[ptr:ptr + len(target)] = labels
            self.queue_ptr[0] = (ptr + len(target)) % self.mem_bank_size
        bank = self.queue.clone()
        dist_t = 2 - 2 * target @ bank.T
        dist_q = 2 - 2 * query @ bank.T
        nn_index = dist_t.topk(self.topk, dim=1, largest=False).indices
        loss = dist_q.gather(1, nn_index).sum(dim=1).div(self.topk).mean()
        purity = (self.labels[nn_index] == labels[:, None]).float().sum(dim=1).div(self.topk).mean()
        return loss, purity


def data_parallel_state_dict(model: OriginalMeanShift) -> dict:
    """The state dict as the original trainer saved it: each sub-network wrapped in nn.DataParallel."""
    out = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        out[f"{head}.module.{rest}" if head in ("encoder_q", "encoder_t", "predict_q") else key] = value
    return out
