"""The drop-in in another codebase's loop that keeps its own SGD (lr 0.01, momentum 0.9, batch 256): which
criterion collapses the model? (A tester's reproducer, kept as run; README "Your own training loop".)

A BatchNorm ConvNet of "another codebase" trained on 600 animal-mnist images (10% forgotten at random), then one
loop per row: plain cross-entropy, the drop-in's criterion under the default recipe and the paper's, and the
recipe's own optimiser (``prep.optimizer``). Run from this folder::

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python sgd_collapse.py > sgd_collapse.log
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastblend


def data(n_train=600, n_test=300, seed=0):
    tr, te = fastblend.load_dataset("animal-mnist")
    g = torch.Generator().manual_seed(seed)
    i = torch.randperm(len(tr.labels), generator=g)[:n_train]
    j = torch.randperm(len(te.labels), generator=g)[:n_test]
    x, y = tr.images[i].clone(), tr.labels[i].clone()
    xt, yt = te.images[j].clone(), te.labels[j].clone()
    f = torch.zeros(len(y), dtype=torch.bool)
    f[torch.randperm(len(y), generator=g)[: n_train // 10]] = True
    h = len(yt) // 2
    return {"retain": (x[~f], y[~f]), "forget": (x[f], y[f]), "unseen": (xt[:h], yt[:h]), "test": (xt[h:], yt[h:])}


class Net(nn.Module):  # "another codebase"'s model, with BatchNorm
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc(x.flatten(1))


def accuracy(model, xy):
    model.eval()
    with torch.no_grad():
        out = 100.0 * float((model(xy[0]).argmax(1) == xy[1]).float().mean())
    model.train()
    return round(out, 1)


def original_model(d, seed=0, epochs=8):
    torch.manual_seed(seed)
    m = Net()
    x, y = torch.cat([d["retain"][0], d["forget"][0]]), torch.cat([d["retain"][1], d["forget"][1]])
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(m(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m


def main():
    torch.set_num_threads(1)
    d = data()
    original = original_model(d)

    def loader(k, shuffle=False):
        return DataLoader(TensorDataset(*d[k]), batch_size=256, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(1))

    def run(label, request=None, plain=False, momentum=0.9, recipe_optimiser=False):
        model = copy.deepcopy(original)
        kw = {} if request is None else {"request": request}
        prep = fastblend.prepare_unlearning(model, loader("retain", True), loader("forget"), loader("unseen"),
                                            batch_size=256, seed=0, stop=None, **kw)
        opt = prep.optimizer(model) if recipe_optimiser else \
            torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
        model.train()
        steps = 0
        for _ in range(prep.epochs):
            for x, y in prep.retain_loader:
                out = model(x)
                loss = F.cross_entropy(out, y) if plain else prep.criterion(out, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        print(f"{label:48s} request={prep.request} steps={steps} retain/forget/test",
              [accuracy(model, d[k]) for k in ("retain", "forget", "test")], flush=True)

    print("original", [accuracy(original, d[k]) for k in ("retain", "forget", "test")])
    run("plain cross-entropy, SGD 0.01 m0.9", plain=True)
    run("criterion, default recipe, SGD 0.01 m0.9")
    run("criterion, request=sample, SGD 0.01 m0.9", request="sample")
    run("criterion, default recipe, SGD 0.01 no momentum", momentum=0.0)
    run("criterion, default recipe, prep.optimizer (Adam)", recipe_optimiser=True)


if __name__ == "__main__":
    main()
