"""`shipyard k8s`: Kubernetes manifests (and KServe resources, and a Helm chart) for some models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, parse_pairs, state


def k8s(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Versions to serve: NAME, NAME:VERSION, NAME@ALIAS.")],
    image: Annotated[
        str, typer.Option(metavar="IMAGE", help="The image `shipyard build` made for these models.")
    ],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder to write the manifests to.")],
    namespace: Annotated[str, typer.Option(metavar="NS", help="Namespace of every object.")] = "default",
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Name of the objects (default shipyard-MODEL…).")
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(metavar="N", help="Pods to start with (default: --min).")
    ] = None,
    min_replicas: Annotated[
        int | None, typer.Option("--min", metavar="N", help="Fewest pods the autoscaler keeps (default 2).")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max", metavar="N", help="Most pods the autoscaler starts (default 10).")
    ] = None,
    cpu: Annotated[str, typer.Option(metavar="QUANTITY", help="CPU request and limit, e.g. 500m, 2.")] = "1",
    memory: Annotated[
        str | None,
        typer.Option(
            metavar="QUANTITY",
            help="Memory request and limit, e.g. 2Gi (default: 512Mi + twice the artifacts, at least 1Gi).",
        ),
    ] = None,
    target_in_flight: Annotated[
        int, typer.Option(metavar="N", help="Requests in flight per pod the autoscaler aims for.")
    ] = 8,
    kserve: Annotated[
        bool, typer.Option("--kserve", help="Also a KServe ServingRuntime and InferenceService.")
    ] = False,
    helm: Annotated[bool, typer.Option("--helm", help="Also the same as a Helm chart (chart/).")] = False,
    shared_registry: Annotated[
        bool,
        typer.Option(
            "--shared-registry",
            help="Serve from the shared registry whose database URL is in the Secret (key registry-url), "
            "following aliases, rather than from the image's own.",
        ),
    ] = False,
    artifact_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="The shared registry's artifact store (with --shared-registry)."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="The Secret the pods read keys from (default NAME-secrets)."),
    ] = None,
    service_account: Annotated[
        str | None, typer.Option(metavar="NAME", help="Create and run as this ServiceAccount.")
    ] = None,
    annotation: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="ServiceAccount annotation for cloud workload identity, e.g. "
            "eks.amazonaws.com/role-arn=arn:aws:iam::…; repeatable.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out if `shipyard k8s` wrote it before.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Write Kubernetes manifests (Deployment, Service, HPA, PDB, ServiceMonitor, …) for some models."""
    from shipyard.deploy.manifests import KubeConfig, check_options, write_manifests

    config = KubeConfig(
        refs=tuple(refs),
        image=image,
        out=out.expanduser(),
        namespace=namespace,
        name=name,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        kserve=kserve,
        helm=helm,
        force=force,
        shared_registry=shared_registry,
        artifact_url=artifact_url,
        secret=secret,
        service_account=service_account,
        annotations=tuple(parse_pairs(annotation, "annotation").items()),
        target_in_flight=target_in_flight,
    )
    check_options(config)  # a bad option is one line before the registry is opened
    written = write_manifests(state(ctx).registry(), config)
    spec = written.spec
    if json_:
        from shipyard.cli._render import print_json

        print_json(
            {
                "out": str(written.path),
                "name": spec.name,
                "namespace": spec.namespace,
                "models": list(spec.served),
                "files": list(written.files),
            }
        )
        return
    typer.echo(f"wrote {written.path}: {len(written.files)} files for {', '.join(spec.served)}")
    typer.echo(f"apply them: kubectl apply -k {written.path}")
    if helm:
        typer.echo(f"or with Helm: helm install {spec.name} {written.path / 'chart'} -n {spec.namespace}")


def register(app: typer.Typer) -> None:
    app.command()(k8s)
