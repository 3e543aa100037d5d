# SPDX-License-Identifier: LGPL-2.1-or-later
"""The ``pyqcrypt-commands`` directive: one section per command of the
``pyqcrypt`` parser (usage, description, options, examples), from
``pyqcrypt.cli_reference``, the walk the man page renders too."""

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _paragraph(text):
    return nodes.paragraph(text, text)


def _options(cmd):
    items = nodes.definition_list()
    for option in cmd.options:
        term = ", ".join(option.flags) if option.flags else option.metavar
        if option.flags and option.metavar is not None:
            term += " " + option.metavar
        item = nodes.definition_list_item()
        item += nodes.term("", "", nodes.literal(term, term))
        item += nodes.definition("", _paragraph(option.help))
        items += item
    return items


def _command(cmd, document):
    title = cmd.name + "".join(" (%s)" % alias for alias in cmd.aliases)
    section = nodes.section(ids=[nodes.make_id("command-" + cmd.name)])
    section += nodes.title(title, title)
    section += _paragraph(cmd.summary)
    section += nodes.literal_block(cmd.usage, cmd.usage)
    if cmd.description:
        section += _paragraph(cmd.description)
    section += _options(cmd)
    if cmd.examples:
        section += _paragraph("Examples:")
        text = "\n".join(cmd.examples)
        section += nodes.literal_block(text, text, language="sh")
    document.note_implicit_target(section)
    return section


class CommandsDirective(SphinxDirective):
    has_content = False

    def run(self):
        from pyqcrypt.cli_reference import program
        cli = program()
        out = [_paragraph(cli.description)]
        return out + [_command(cmd, self.state.document) for cmd in cli.commands]


def setup(app):
    app.add_directive("pyqcrypt-commands", CommandsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
