"""`initlab compare`'s argument checks, in-process: what passes, and what each refusal says."""
import pytest

from initlab.lab import cli
from initlab.lab.checks import check_compare_args
from initlab.lab.usage import UsageError


def args(*extra: str):
    return cli.parser().parse_args(["compare", "--model", "mlp", "--depth", "3", *extra])


def test_good_arguments_pass_and_create_out(tmp_path):
    out = tmp_path / "new" / "run"
    check_compare_args(args("--methods", "default,kaiming+gradinit,lsuv", "--out", str(out),
                            "--set", "gradinit.steps=5", "--set", "lsuv.tol=0.05"))
    assert out.is_dir()


def test_set_reads_inf_as_a_number():
    a = args("--set", "gradinit.max_growth=inf", "--set", "gradinit.gamma=-inf")
    assert dict(((m, k), v) for m, k, v in a.settings) == {("gradinit", "max_growth"): float("inf"),
                                                      ("gradinit", "gamma"): float("-inf")}


def test_fixed_rules_are_tried_on_the_model(tmp_path):
    a = cli.parser().parse_args(["compare", "--model", "resnet", "--depth", "8", "--methods",
                                 "fixup,skipinit", "--out", str(tmp_path)])
    check_compare_args(a)  # the lab's ResNet marks its branches
    with pytest.raises(UsageError, match="--methods skipinit cannot initialize --model vgg"):
        check_compare_args(cli.parser().parse_args(
            ["compare", "--model", "vgg", "--depth", "4", "--methods", "skipinit",
             "--out", str(tmp_path)]))
    with pytest.raises(UsageError, match="--set fixup: .*mode must be 'fan_in' or 'fan_out'"):
        check_compare_args(cli.parser().parse_args(
            ["compare", "--model", "resnet", "--depth", "8", "--methods", "fixup",
             "--set", "fixup.mode=sideways", "--out", str(tmp_path)]))


def test_the_cifar_vgg_under_a_recipe_passes(tmp_path):
    check_compare_args(cli.parser().parse_args(
        ["compare", "--recipe", "authors-cnn", "--model", "cifar-vgg", "--depth", "19",
         "--augment", "crop,flip", "--pad-to", "32", "--out", str(tmp_path)]))


def test_lab_settings_and_epoch_steps_are_accepted(tmp_path):
    check_compare_args(args("--set", "gradinit.batch_fraction=0.25", "--set",
                            "gradinit.steps=epoch", "--out", str(tmp_path)))


@pytest.mark.parametrize("extra,message", [
    (["--methods", ""], "--methods is empty"),
    (["--methods", "default,kaiming+"], "'' is unknown"),
    (["--set", "gradinit.gamma=-1"], "gamma must be a positive number or inf"),
    (["--set", "kaiming.mode=fan_in"], "'kaiming' is not among --methods"),
    (["--activation", "tanh", "--model", "vgg"], "applies to --model mlp only"),
    (["--momentum", "1.5"], "--momentum must lie in [0, 1)"),
    (["--clip", "-1"], "--clip must be a number >= 0"),
    (["--model", "resnet", "--depth", "9"], "--model resnet: "),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--recipe", "authors-cmn"], "--recipe 'authors-cmn' is unknown (did you mean 'authors-cnn'"),
    (["--augment", "crop,rotate"], "--augment 'rotate' is unknown"),
    (["--pad-to", "-1"], "--pad-to must be an integer >= 0"),
    (["--bias-lr-scale", "0"], "--bias-lr-scale must be a positive number"),
    (["--max-minutes", "-5"], "--max-minutes must be a number >= 0"),
])
def test_refusals(extra, message, tmp_path):
    with pytest.raises(UsageError) as info:
        check_compare_args(args(*extra, "--out", str(tmp_path)))
    assert message in str(info.value)
