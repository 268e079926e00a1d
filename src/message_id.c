/*
 * The Message-ID scanner (see message_id.h): a state per position in a
 * header line, so that a piece may end anywhere, even inside CRLF.
 */
#include <string.h>

#include "facteur/message_id.h"

enum scan_state {
	SCAN_LINE_START, /* zero: a message's first octet is a line start */
	SCAN_NAME,	 /* matching the field name against "message-id" */
	SCAN_SKIP,	 /* another field, or a line that is none: to its end */
	SCAN_VALUE,	 /* the Message-ID's value, to the end of its line */
	SCAN_DONE,	 /* the body, or the field kept: nothing more to see */
};

static const char *field_name(const struct message_id_scan *scan)
{
	return scan->field != NULL ? scan->field : "message-id";
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Leading spaces are not kept, so that the cap counts the value only. */
static void value_add(struct message_id_scan *scan, char c)
{
	if (c == ' ' && scan->value_len == 0)
		return;
	if (scan->value_len >= MESSAGE_ID_MAX) {
		scan->truncated = true;
		return;
	}
	scan->value[scan->value_len++] = c;
}

/* The first octet of a line decides what the line is. */
static enum scan_state line_start(struct message_id_scan *scan, char c)
{
	bool folded = c == ' ' || c == '\t';
	if (c == '\r')
		return SCAN_LINE_START; /* CR of an empty line, or stray */
	if (c == '\n')
		return SCAN_DONE; /* the empty line: the body follows */
	if (scan->found && !folded)
		return SCAN_DONE; /* the field ended with its last fold */
	if (folded) {
		if (!scan->found)
			return SCAN_SKIP; /* another field's fold */
		value_add(scan, ' ');
		return SCAN_VALUE;
	}
	scan->name_len = 0;
	if (lower(c) != field_name(scan)[0])
		return SCAN_SKIP;
	scan->name_len = 1;
	return SCAN_NAME;
}

static enum scan_state name_octet(struct message_id_scan *scan, char c)
{
	if (c == '\n')
		return SCAN_LINE_START;
	const char *name = field_name(scan);
	if (name[scan->name_len] == '\0') {
		if (c == ':') {
			scan->found = true;
			return SCAN_VALUE;
		}
		/* RFC 5322 obsolete syntax: spaces before the colon */
		return c == ' ' || c == '\t' ? SCAN_NAME : SCAN_SKIP;
	}
	if (lower(c) != name[scan->name_len])
		return SCAN_SKIP;
	scan->name_len++;
	return SCAN_NAME;
}

void message_id_feed(struct message_id_scan *scan, const char *in, size_t len)
{
	for (size_t i = 0; i < len && scan->state != SCAN_DONE; i++) {
		char c = in[i];
		switch ((enum scan_state)scan->state) {
		case SCAN_LINE_START:
			scan->state = line_start(scan, c);
			break;
		case SCAN_NAME:
			scan->state = name_octet(scan, c);
			break;
		case SCAN_SKIP:
			if (c == '\n')
				scan->state = SCAN_LINE_START;
			break;
		case SCAN_VALUE:
			if (c == '\n')
				scan->state = SCAN_LINE_START;
			else if (c != '\r')
				value_add(scan, c == '\t' ? ' ' : c);
			break;
		case SCAN_DONE:
			break;
		}
	}
}

const char *message_id_value(struct message_id_scan *scan)
{
	if (!scan->found)
		return NULL;
	size_t start = 0, end = scan->value_len;
	while (start < end && scan->value[start] == ' ')
		start++;
	while (end > start && scan->value[end - 1] == ' ')
		end--;
	memmove(scan->value, scan->value + start, end - start);
	scan->value_len = end - start;
	scan->value[scan->value_len] = '\0';
	return scan->value;
}
