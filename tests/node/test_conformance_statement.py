"""The DICOM conformance statement (`DICOM_CONFORMANCE.md`): current with the code, and true of a running node.

The node's answers are checked against the UIDs the committed file lists, read from its tables, so a statement that
claims a class or transfer syntax the node refuses (or the reverse) fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

from app.node.dicom_conformance_statement import conformance_statement
from tests.node.node_support import CALLING_AE, NODE_AE

STATEMENT = Path(__file__).resolve().parents[2] / "DICOM_CONFORMANCE.md"
UID_CELL = re.compile(r"^\| [^|]+ \| `([0-9.]+)` \|$")


def table_uids(section: str, table_index: int) -> list[str]:
    """The UIDs of the `table_index`-th UID table after the heading `section` of the committed statement."""
    text = STATEMENT.read_text(encoding="utf-8").split(section, 1)[1]
    tables = []
    for block in text.split("\n\n"):  # a table is one block of lines between blank lines
        uids = [match.group(1) for line in block.splitlines() if (match := UID_CELL.match(line))]
        if uids:
            tables.append(uids)
    return tables[table_index]


def test_the_committed_statement_is_what_the_code_writes() -> None:
    """Regenerate with `python -m app.node.dicom_conformance_statement > DICOM_CONFORMANCE.md`."""
    assert STATEMENT.read_text(encoding="utf-8") == conformance_statement()


def accepted_contexts(port: int, requested: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """(abstract syntax, transfer syntax) -> whether the node accepted that presentation context."""
    ae = AE(ae_title=CALLING_AE)
    for abstract, transfer in requested:
        ae.add_requested_context(abstract, [transfer])
    association = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert association.is_established
    try:
        accepted = {
            (str(context.abstract_syntax), str(context.transfer_syntax[0])) for context in association.accepted_contexts
        }
        return {pair: pair in accepted for pair in requested}
    finally:
        association.release()


def test_the_node_accepts_each_listed_class_in_each_listed_transfer_syntax(make_node: Any) -> None:
    node = make_node()
    section = "### Presentation contexts accepted"
    read_classes, transfer_syntaxes = table_uids(section, 0), table_uids(section, 1)
    ignored_classes = table_uids(section, 2)
    assert len(read_classes) == 7 and len(transfer_syntaxes) == 15 and len(ignored_classes) == 15
    read_classes.remove("1.2.840.10008.1.1")  # Verification: the uncompressed syntaxes only, as the text says

    pairs = [(sop_class, syntax) for sop_class in read_classes for syntax in transfer_syntaxes]  # 72 of 128
    pairs += [(sop_class, ExplicitVRLittleEndian) for sop_class in ignored_classes]
    pairs += [(CTImageStorage, ExplicitVRLittleEndian)]  # "every other storage class of the standard"
    pairs += [(PatientRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)]  # "a non-storage service"
    answers = accepted_contexts(node.config.port, pairs)

    assert {pair for pair, accepted in answers.items() if accepted} == set(pairs[:-1])
    assert answers[(PatientRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)] is False


def test_the_listed_results_are_what_the_node_proposes(make_node: Any) -> None:
    """Section 4's tables against the sender's requested contexts, for a SEG and an SR."""
    section = "## 4. Association initiation (SCU)"
    classes, syntaxes = table_uids(section, 0), table_uids(section, 1)
    node = make_node()
    # The AE the sender would open for a SEG and an SR (its requested contexts are per send).
    proposed = node.sender._application_entity([_Dataset(sop_class) for sop_class in classes]).requested_contexts

    assert sorted((str(context.abstract_syntax), list(context.transfer_syntax)) for context in proposed) == sorted(
        (sop_class, syntaxes) for sop_class in classes
    )


class _Dataset:
    """Just the SOP Class UID the sender reads to choose its contexts."""

    def __init__(self, sop_class_uid: str) -> None:
        self.SOPClassUID = sop_class_uid
