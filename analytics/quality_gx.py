"""The Great Expectations side of ``validate``: an ephemeral context, the suites, Data Docs.

GX is imported here only, when a validation starts (it takes seconds), with its usage analytics
off: ``GX_ANALYTICS_ENABLED=False`` before the import, and ``analytics_enabled: false`` in the
context's config. (GX 1.24 has no analytics client left, and ``tests/test_quality.py`` runs
``validate`` with the network blocked.) Stores are in memory; the only files written are the
Data Docs site's, under the directory given.
"""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analytics.quality_suites import SuiteError, SuiteSpec

#: GX's result format: counts, never values of failing rows (no partial unexpected list, no
#: unexpected rows, no index query).
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 0,
    "exclude_unexpected_values": True,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
#: The key of an expectation's ``meta`` that holds its index in its suite: GX does not keep a
#: suite's order in its results.
INDEX_KEY = "aiep_index"
#: The Data Docs site's name in the context.
SITE = "quality"


class GxSession:
    """One ephemeral GX context: a pandas data source with a dataframe asset per suite, and a
    local Data Docs site in ``docs_dir``."""

    def __init__(self, specs: Sequence[SuiteSpec], docs_dir: Path) -> None:
        gx = import_gx()
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        site = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            data_docs_sites={SITE: site},
        )
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        source = self.context.data_sources.add_pandas("aiep")
        self.run_name = f"validate-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        self.definitions: dict[str, Any] = {}
        self.batch_definitions: dict[str, Any] = {}
        for spec in specs:
            suite = self.context.suites.add(gx_suite(gx, spec))
            definition = source.add_dataframe_asset(spec.name).add_batch_definition_whole_dataframe("batch")
            self.batch_definitions[spec.name] = definition
            self.definitions[spec.name] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=spec.name, data=definition, suite=suite)
            )

    def validate(
        self,
        spec: SuiteSpec,
        frame: Any,
        parameters: Mapping[str, Any],
        *,
        stored: bool = False,
        only: Sequence[int] | None = None,
    ) -> Any:
        """Validate ``frame`` with the suite (kept for Data Docs when ``stored``), or with only
        the expectations at the indices ``only`` (not kept)."""
        from great_expectations.core.run_identifier import RunIdentifier

        if stored:
            run_id = RunIdentifier(run_name=self.run_name, run_time=datetime.now(UTC))
            return self.definitions[spec.name].run(
                batch_parameters={"dataframe": frame},
                expectation_parameters=dict(parameters),
                result_format=dict(RESULT_FORMAT),
                run_id=run_id,
            )
        subset = gx_suite(self.gx, spec, only)
        batch = self.batch_definitions[spec.name].get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(
            subset, result_format=dict(RESULT_FORMAT), expectation_parameters=dict(parameters)
        )

    def build_docs(self) -> None:
        """Write the Data Docs of every stored validation (and the suites) to the site."""
        self.context.build_data_docs(site_names=[SITE])


def gx_suite(gx: Any, spec: SuiteSpec, only: Sequence[int] | None = None) -> Any:
    """The GX suite of ``spec`` (or of its expectations at ``only``); SuiteError when GX refuses
    an expectation, or one is not checked row by row (a batch is part of a dataset, so an
    aggregate such as a mean would be judged on a part)."""
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    chosen = range(len(spec.expectations)) if only is None else only
    expectations = []
    for i in chosen:
        doc = spec.expectations[i]
        where = f"expectation suite {str(spec.path)!r}: {doc.get('type')} (expectation {i + 1})"
        try:
            meta = {**doc.get("meta", {}), INDEX_KEY: i}
            expectation = ExpectationConfiguration(**{**doc, "meta": meta}).to_domain_obj()
        except Exception as exc:  # GX raises several kinds for a bad configuration
            raise SuiteError(f"{where}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(
            expectation, ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation
        ):
            raise SuiteError(f"{where}: only row-by-row (map) expectations can be checked file by file")
        expectations.append(expectation)
    name = spec.name if only is None else f"{spec.name} (failing expectations)"
    return gx.ExpectationSuite(name=name, expectations=expectations, meta=dict(spec.meta), notes=spec.notes)


def import_gx() -> Any:
    """Great Expectations, imported with usage analytics off and its chatter quiet."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return typing.cast(Any, gx)


def outcomes(result: Any) -> list[tuple[int, Any]]:
    """``(index of the expectation in its SuiteSpec, its result)`` for each result of a suite's
    validation, in the suite's order."""
    return sorted(
        ((int(r.expectation_config.meta[INDEX_KEY]), r) for r in result.results), key=lambda p: p[0]
    )
