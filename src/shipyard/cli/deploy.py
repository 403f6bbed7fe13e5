"""`shipyard deploy sagemaker|vertex|azure REF --image IMAGE`: an endpoint on a managed cloud that
runs the image `shipyard build --platform …` made, or with --dry-run the exact requests."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli._context import JsonFlag, state
from shipyard.cli._help import PlainHelpGroup

deploy_app = typer.Typer(
    name="deploy",
    cls=PlainHelpGroup,
    help="Deploy a model to SageMaker, Vertex AI or Azure ML (or write the requests with --dry-run).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

RefArg = Annotated[str, typer.Argument(help="The version to deploy: NAME, NAME:VERSION, NAME@ALIAS.")]
ImageOpt = Annotated[
    str,
    typer.Option(
        metavar="IMAGE", help="The image `shipyard build --platform …` made, in the cloud's registry."
    ),
]
NameOpt = Annotated[
    str | None, typer.Option(metavar="NAME", help="Endpoint name (default shipyard-NAME-VERSION).")
]
InstancesOpt = Annotated[int, typer.Option(min=1, max=1000, help="Instances serving the endpoint.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Write the requests (and model files) instead of sending them.")
]
OutOpt = Annotated[
    Path | None,
    typer.Option(metavar="DIR", help="With --dry-run: the folder to write (default: print the plan)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace --out if it holds a plan written before.")]
TimeoutOpt = Annotated[
    float, typer.Option(metavar="SECONDS", min=1, help="How long to wait for the endpoint to serve.")
]


def _finish(plan: Any, dry_run: bool, out: Path | None, force: bool, json_: bool) -> bool:
    """Write or print a dry run's plan; True when the command is done."""
    from shipyard.deploy.cloud import write_plan

    if out is not None and not dry_run:
        from shipyard.errors import InvalidInputError

        raise InvalidInputError("--out is for --dry-run: a deploy sends its requests", field="out")
    if not dry_run:
        return False
    if out is not None:
        written = write_plan(plan, out.expanduser(), force)
        if json_:
            from shipyard.cli._render import print_json

            print_json({**plan.to_json(), "out": str(out), "written": [p.name for p in written]})
        else:
            typer.echo(f"wrote {out}: {', '.join(p.name for p in written)}")
        return True
    from shipyard.cli._render import print_json

    print_json({**plan.to_json(), "documents": plan.documents})
    return True


def _progress(json_: bool) -> Callable[[str], None]:
    """Where a deploy says what it is doing while it waits (minutes): stderr, unless --json."""
    return (lambda _line: None) if json_ else (lambda line: typer.echo(line, err=True))


def _result(result: dict[str, Any], json_: bool) -> None:
    if json_:
        from shipyard.cli._render import print_json

        print_json(result)
        return
    typer.echo(f"{result['platform']} endpoint {result['endpoint']} serves")
    typer.echo(f"call it: {result['invoke']}")


@deploy_app.command()
def sagemaker(
    ctx: typer.Context,
    ref: RefArg,
    image: ImageOpt,
    role: Annotated[
        str, typer.Option(metavar="ARN", envvar="SAGEMAKER_ROLE_ARN", help="IAM role the endpoint runs as.")
    ],
    instance_type: Annotated[
        str, typer.Option(metavar="TYPE", help="SageMaker instance type.")
    ] = "ml.m5.large",
    instances: InstancesOpt = 1,
    region: Annotated[
        str | None, typer.Option(metavar="REGION", help="AWS region (default: AWS's config).")
    ] = None,
    bucket: Annotated[
        str | None,
        typer.Option(
            metavar="BUCKET", help="S3 bucket for the model data (default sagemaker-REGION-ACCOUNT)."
        ),
    ] = None,
    name: NameOpt = None,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = 1800.0,
    poll: Annotated[float, typer.Option(metavar="SECONDS", min=0.01, hidden=True)] = 15.0,
    json_: JsonFlag = False,
) -> None:
    """Model data to S3, then SageMaker's model, endpoint configuration and endpoint."""
    from shipyard.deploy import cloud
    from shipyard.deploy import sagemaker as aws

    with tempfile.TemporaryDirectory(prefix="shipyard-deploy-") as staging:
        versions, model = cloud.model_folder(state(ctx).registry(), [ref], Path(staging))
        target = aws.Target(
            image=image,
            role=role,
            region=aws.region(region),
            name=name or cloud.endpoint_name(versions),
            instance_type=instance_type,
            instances=instances,
            bucket=bucket,
            digest=versions[0].digest,
        )
        plan = aws.plan(target, cloud.archive(model))
        if _finish(plan, dry_run, out, force, json_):
            return
        _result(aws.execute(plan, timeout_s=timeout, interval_s=poll, echo=_progress(json_)), json_)


@deploy_app.command()
def vertex(
    ctx: typer.Context,
    ref: RefArg,
    image: ImageOpt,
    project: Annotated[
        str | None,
        typer.Option(metavar="PROJECT", envvar="GOOGLE_CLOUD_PROJECT", help="Google Cloud project."),
    ] = None,
    region: Annotated[str, typer.Option(metavar="REGION", help="Vertex AI region.")] = "us-central1",
    instance_type: Annotated[str, typer.Option(metavar="TYPE", help="Machine type.")] = "n1-standard-2",
    instances: InstancesOpt = 1,
    max_instances: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Autoscale up to N (default --instances).")
    ] = None,
    name: NameOpt = None,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = 3600.0,
    json_: JsonFlag = False,
) -> None:
    """Upload the model to Vertex AI with the image as its container, create an endpoint, deploy."""
    from shipyard.deploy import cloud
    from shipyard.deploy import vertex as gcp
    from shipyard.types import ModelRef

    version = state(ctx).registry().resolve(ModelRef.parse(ref))
    target = gcp.Target(
        image=image,
        project=project or "",
        region=region,
        name=name or cloud.endpoint_name([version]),
        machine_type=instance_type,
        min_replicas=instances,
        max_replicas=max_instances or instances,
        digest=version.digest,
    )
    plan = gcp.plan(target)
    if _finish(plan, dry_run, out, force, json_):
        return
    _result(gcp.execute(plan, timeout_s=timeout, echo=_progress(json_)), json_)


@deploy_app.command()
def azure(
    ctx: typer.Context,
    ref: RefArg,
    image: ImageOpt,
    subscription: Annotated[
        str | None, typer.Option(metavar="ID", envvar="AZURE_SUBSCRIPTION_ID", help="Azure subscription.")
    ] = None,
    resource_group: Annotated[
        str | None, typer.Option(metavar="GROUP", envvar="AZURE_RESOURCE_GROUP", help="Resource group.")
    ] = None,
    workspace: Annotated[
        str | None, typer.Option(metavar="NAME", envvar="AZUREML_WORKSPACE_NAME", help="Azure ML workspace.")
    ] = None,
    instance_type: Annotated[str, typer.Option(metavar="SIZE", help="VM size.")] = "Standard_DS3_v2",
    instances: InstancesOpt = 1,
    name: NameOpt = None,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = 3600.0,
    json_: JsonFlag = False,
) -> None:
    """A managed online endpoint and a deployment of the image, the model folder mounted."""
    from shipyard.deploy import azureml, cloud

    with tempfile.TemporaryDirectory(prefix="shipyard-deploy-") as staging:
        versions, model = cloud.model_folder(state(ctx).registry(), [ref], Path(staging))
        target = azureml.Target(
            image=image,
            name=name or cloud.endpoint_name(versions)[:32].rstrip("-"),
            instance_type=instance_type,
            instances=instances,
            digest=versions[0].digest,
        )
        plan = azureml.plan(target, model)
        if _finish(plan, dry_run, out, force, json_):
            return
        result = azureml.execute(
            plan,
            Path(staging),
            subscription=subscription,
            resource_group=resource_group,
            workspace=workspace,
            timeout_s=timeout,
            echo=_progress(json_),
        )
        _result(result, json_)


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app)
