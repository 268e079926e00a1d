/*
 * A protocol's states written once, as a list macro of
 * X(STATE, "name", ...) entries, so that the enum and the names the
 * debug log gives its moves cannot drift apart: STATE_LIST_ENUM makes
 * the enum's members, STATE_LIST_NAME the table of names indexed by it.
 * Further columns of an entry are the module's own.
 */
#ifndef FACTEUR_STATE_LIST_H
#define FACTEUR_STATE_LIST_H

#define STATE_LIST_ENUM(state, name, ...) state,
#define STATE_LIST_NAME(state, name, ...) [state] = name,

#endif
