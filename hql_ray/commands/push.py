"""`hql-ray push RUN_DIR --repo-prefix OWNER/NAME`: a finished run's language models on the Hugging Face Hub.

    hql-ray push runs/12langs_pthql --repo-prefix me/hql-pthql --dry-run     # what would be uploaded, cards checked
    hql-ray push runs/12langs_pthql --repo-prefix me/hql-pthql --private     # me/hql-pthql-deu_Latn, ...
    hql-ray push runs/demo --repo-prefix me/hql-demo --single-repo -o pushed # one repository, a folder per language

Each language's repository holds its export (the PEFT adapter, or the whole model), a model card built with
huggingface_hub's ModelCardData (base model, ISO 639-1 language, license, datasets, pipeline tag, eval results per
test set, tags; the exact prompt; a load snippet in the run's compute dtype) and the run's config, so that
`hql-ray generate hf://OWNER/NAME-<code>` (and `serve`) load it as they load the run. Log in first
(`hf auth login`, or HF_TOKEN).
"""

from __future__ import annotations

import argparse

from hql_ray.commands import flags


def add_parser(sub) -> None:
    p = sub.add_parser(
        "push",
        help="publish a finished run's language models on the Hugging Face Hub",
        description="Upload every exported language of RUN_DIR to the Hugging Face Hub: one repository per language "
        "(OWNER/NAME-<code>), or one with a folder per language (--single-repo), with model cards the Hub indexes. "
        "--dry-run lists what would be uploaded and checks the cards; nothing is sent.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (manifest.json, final/<code>/)")
    p.add_argument("--repo-prefix", required=True, metavar="OWNER/NAME",
                   help="your Hub user or organization and a name: repositories OWNER/NAME-<code> (OWNER/NAME with "
                        "--single-repo)")
    p.add_argument("--private", action="store_true", help="create the repositories private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded and check the cards; upload nothing")
    p.add_argument("--single-repo", action="store_true",
                   help="one repository OWNER/NAME with a folder per language (default: one repository per language)")
    flags.add_langs(p, "languages to push, by code or name (default: every language with an export)")
    flags.add_output(p, "also write the repositories' files under DIR/OWNER/NAME... (a local copy of what the Hub "
                        "would hold; `hql-ray generate DIR/OWNER/NAME...` loads it)", metavar="DIR")
    p.add_argument("--message", default=None, help="commit message (default: 'hql-ray push of run <name>')")
    flags.add_verbosity(p)
    p.set_defaults(run=run)


def render(plan, problems: dict[str, list[str]], private: bool) -> list[str]:
    """The repositories, their files and sizes, each card's check, and the languages left out."""
    lines = [f"{len(plan.repos)} repositor{'y' if len(plan.repos) == 1 else 'ies'} "
             f"({'private' if private else 'public'}) from {plan.run_dir}:"]
    for repo in plan.repos:
        what = ", ".join(repo.languages) or "the base the adapters name"
        lines.append(f"  {repo.repo_id}  ({what}; {len(repo.files)} files, {_size(repo.size)})")
        for f in repo.files:
            made = "" if f.source is not None else "  (written by push)"
            lines.append(f"    {f.path:<44} {_size(f.size):>9}{made}")
    for where, found in problems.items():
        lines += [f"  card problem: {where}: {p}" for p in found]
    lines += [f"  not pushed: {code}: {why}" for code, why in plan.skipped.items()]
    lines += [f"  note: {note}" for note in plan.notes]
    return lines


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def card_problems(plan) -> dict[str, list[str]]:
    """Every card of the plan as huggingface_hub parses it: {repo/path: problems}, only those with some."""
    from hql_ray.outputs import model_card, publish

    found = {}
    for repo in plan.repos:
        for f in repo.files:
            if f.path.rsplit("/", 1)[-1] != model_card.CARD:
                continue
            languages = repo.languages if "/" not in f.path else [f.path.split("/", 1)[0]]
            problems = publish.check_card(f.text, languages)
            if problems:
                found[f"{repo.repo_id}/{f.path}"] = problems
    return found


def run(args: argparse.Namespace) -> int:
    from hql_ray.outputs import publish
    from hql_ray.settings.errors import InputError

    plan = publish.plan_push(args.run_dir, args.repo_prefix, single_repo=args.single_repo,
                             languages=flags.words(args.langs))
    problems = card_problems(plan)
    if not args.quiet or problems:
        print("\n".join(render(plan, problems, args.private)))
    if args.output:
        folders = publish.write_plan(plan, args.output)
        if not args.quiet:
            print(f"wrote {', '.join(str(f) for f in folders)}")
    if problems:
        raise InputError(f"{len(problems)} model card(s) would not read well on the Hub (above): nothing uploaded")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    api = hub_api()
    message = args.message or f"hql-ray push of run {plan.run_dir.name}"
    for url in publish.upload(plan, api, private=args.private, message=message):
        print(f"pushed {url}")
    return 0


def hub_api():
    """An HfApi for this user; refused before any upload when offline or not logged in."""
    from huggingface_hub import HfApi, constants, get_token

    from hql_ray.settings.errors import InputError

    if constants.HF_HUB_OFFLINE:
        raise InputError("HF_HUB_OFFLINE is set: nothing can be uploaded (unset it, or use --dry-run)")
    if get_token() is None:
        raise InputError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN")
    return HfApi()
