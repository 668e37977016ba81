"""The three-way merge of format info: key by key, element by element, conflicts by path."""

from __future__ import annotations

from theta_zarr.mergeinfo import ABSENT, merge_info, set_at


def tree(**leaves) -> dict:
    """A PyTorch state dict's tree (``{"__dict__": pairs}``) as the torch plug-in keeps it."""
    return {"name": "torch", "tree": {"__dict__": [[k, v] for k, v in leaves.items()]}}


def test_changes_to_different_leaves_both_survive():
    groups = {"__list__": [{"__dict__": [["lr", 0.1], ["m", 1]]}]}
    base = tree(w={"__tensor__": "w"}, lr=0.1, groups=groups)
    ours = tree(w={"__tensor__": "w"}, lr=0.1, new={"__tensor__": "new"},
                groups={"__list__": [{"__dict__": [["lr", 0.1], ["m", 2]]}]})
    theirs = tree(w={"__tensor__": "w"}, lr=0.2,
                  groups={"__list__": [{"__dict__": [["lr", 0.5], ["m", 1]]}]})
    merged, conflicts = merge_info(base, [ours, theirs])
    assert conflicts == []
    assert merged == tree(w={"__tensor__": "w"}, lr=0.2, new={"__tensor__": "new"},
                          groups={"__list__": [{"__dict__": [["lr", 0.5], ["m", 2]]}]})


def test_a_leaf_changed_differently_is_a_conflict_named_by_its_path():
    def side(step: dict, lr: float, m: int) -> dict:
        return {"header": {"__metadata__": step},
                **tree(lr=lr, g={"__list__": [{"__dict__": [["m", m]]}]})}

    base = side({"step": "1", "x": "a"}, 0.1, 1)
    ours = side({"step": "2", "x": "a"}, 0.3, 3)
    theirs = side({"step": "3"}, 0.2, 2)
    merged, conflicts = merge_info(base, [ours, theirs])
    assert sorted(c.name for c in conflicts) == ["__metadata__.step", "g.0.m", "lr"]
    lr = next(c for c in conflicts if c.name == "lr")
    assert (lr.base, lr.sides) == (0.1, [0.3, 0.2])
    # ours where they conflict; theirs's deletion of an unchanged key is taken
    assert merged["header"] == {"__metadata__": {"step": "2"}}
    assert merged["tree"] == ours["tree"]
    # a resolution replaces the leaf at its path, inside pairs and lists alike
    for c in conflicts:
        merged = set_at(merged, c.path, c.sides[1])
    assert merged["tree"] == theirs["tree"] and merged["header"] == theirs["header"]


def test_deleted_on_one_side_changed_on_the_other_conflicts_and_can_be_removed():
    base, ours, theirs = tree(lr=0.1, s=1), tree(lr=0.1), tree(lr=0.1, s=2)
    merged, [c] = merge_info(base, [ours, theirs])
    assert c.name == "s" and c.sides == [ABSENT, 2]
    assert merged == ours
    assert set_at(merged, c.path, 2) == tree(lr=0.1, s=2)
    assert set_at(tree(lr=0.1, s=2), c.path, ABSENT) == ours
