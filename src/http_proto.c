/*
 * HTTP/1.x request heads as data (see http_proto.h). Strict where a
 * lenient reading could make two parsers disagree about where a request
 * ends (RFC 9112 §5.1, §6.3): no space before a field's colon, no folded
 * lines, one Content-Length. Everything else the metrics server does not
 * need is read past.
 */
#include "facteur/http_proto.h"

#include <string.h>
#include <strings.h>

#define HTTP_CONTENT_LENGTH_MAX 1000000000000000000ull

static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* A line's octets before its CRLF or LF. */
struct span {
	const char *p;
	size_t len;
};

static bool span_is(struct span s, const char *word)
{
	return s.len == strlen(word) && strncasecmp(s.p, word, s.len) == 0;
}

static struct span trim_ows(struct span s)
{
	while (s.len > 0 && (s.p[0] == ' ' || s.p[0] == '\t')) {
		s.p++;
		s.len--;
	}
	while (s.len > 0 && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
		s.len--;
	return s;
}

/* Control characters other than HT are never part of a head. */
static bool has_control(struct span s)
{
	for (size_t i = 0; i < s.len; i++) {
		unsigned char c = (unsigned char)s.p[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return true;
	}
	return false;
}

/* The next line from *pos; false when no LF is left before len. */
static bool next_line(const char *buf, size_t len, size_t *pos,
		      struct span *line)
{
	const char *nl = memchr(buf + *pos, '\n', len - *pos);
	if (nl == NULL)
		return false;
	line->p = buf + *pos;
	line->len = (size_t)(nl - line->p);
	if (line->len > 0 && line->p[line->len - 1] == '\r')
		line->len--;
	*pos = (size_t)(nl - buf) + 1;
	return true;
}

static bool parse_target(struct span t, struct http_request *req)
{
	size_t start = 0;
	size_t end;

	if (t.len == 1 && t.p[0] == '*') {
		strcpy(req->path, "*");
		return true;
	}
	if (t.len >= 7 && strncasecmp(t.p, "http://", 7) == 0)
		start = 7;
	else if (t.len >= 8 && strncasecmp(t.p, "https://", 8) == 0)
		start = 8;
	else if (t.len == 0 || t.p[0] != '/')
		return false;
	if (start > 0) {
		/* absolute-form: the path starts after the authority */
		while (start < t.len && t.p[start] != '/' && t.p[start] != '?')
			start++;
	}
	end = start;
	while (end < t.len && t.p[end] != '?' && t.p[end] != '#')
		end++;
	if (end == start) {
		strcpy(req->path, "/");
		return true;
	}
	if (end - start > HTTP_PATH_MAX) {
		req->path_too_long = true;
		end = start + HTTP_PATH_MAX;
	}
	memcpy(req->path, t.p + start, end - start);
	req->path[end - start] = '\0';
	return true;
}

/* "METHOD SP target SP HTTP/1.x"; sets *minor to x. */
static bool parse_request_line(struct span line, struct http_request *req,
			       int *minor)
{
	const char *sp1 = memchr(line.p, ' ', line.len);
	const char *sp2;
	struct span method, target, version;

	if (sp1 == NULL)
		return false;
	method = (struct span){line.p, (size_t)(sp1 - line.p)};
	sp2 = memchr(sp1 + 1, ' ', line.len - method.len - 1);
	if (sp2 == NULL)
		return false;
	target = (struct span){sp1 + 1, (size_t)(sp2 - sp1 - 1)};
	version = (struct span){sp2 + 1, line.len - (size_t)(sp2 + 1 - line.p)};
	if (method.len == 0)
		return false;
	for (size_t i = 0; i < method.len; i++)
		if (!is_tchar((unsigned char)method.p[i]))
			return false;
	/* methods are case-sensitive (RFC 9110 §9.1) */
	if (method.len == 3 && memcmp(method.p, "GET", 3) == 0)
		req->method = HTTP_METHOD_GET;
	else if (method.len == 4 && memcmp(method.p, "HEAD", 4) == 0)
		req->method = HTTP_METHOD_HEAD;
	else
		req->method = HTTP_METHOD_OTHER;
	if (version.len != 8 || memcmp(version.p, "HTTP/1.", 7) != 0 ||
	    (version.p[7] != '0' && version.p[7] != '1'))
		return false;
	*minor = version.p[7] - '0';
	if (memchr(target.p, ' ', target.len) != NULL)
		return false;
	return parse_target(target, req);
}

static bool parse_content_length(struct span v, uint64_t *out)
{
	uint64_t n = 0;

	if (v.len == 0)
		return false;
	for (size_t i = 0; i < v.len; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return false;
		n = n * 10 + (uint64_t)(v.p[i] - '0');
		if (n > HTTP_CONTENT_LENGTH_MAX)
			return false;
	}
	*out = n;
	return true;
}

/* The tokens of a Connection field: close and keep-alive. */
static void parse_connection(struct span v, bool *close, bool *keep_alive)
{
	while (v.len > 0) {
		const char *comma = memchr(v.p, ',', v.len);
		size_t n = comma != NULL ? (size_t)(comma - v.p) : v.len;
		struct span token = trim_ows((struct span){v.p, n});

		if (span_is(token, "close"))
			*close = true;
		else if (span_is(token, "keep-alive"))
			*keep_alive = true;
		if (comma == NULL)
			break;
		v.p += n + 1;
		v.len -= n + 1;
	}
}

enum http_parse_result http_proto_parse_request(const char *buf, size_t len,
						size_t max_head,
						struct http_request *req)
{
	size_t pos = 0;
	struct span line;
	bool seen_length = false;
	bool close = false;
	bool keep_alive = false;
	int minor = 1;

	memset(req, 0, sizeof *req);
	/* RFC 9112 §2.2: empty lines before the request line are ignored */
	for (;;) {
		size_t at = pos;
		if (!next_line(buf, len, &pos, &line))
			return len > max_head ? HTTP_PARSE_TOO_LARGE
					      : HTTP_PARSE_AGAIN;
		if (pos > max_head)
			return HTTP_PARSE_TOO_LARGE;
		if (line.len > 0) {
			pos = at;
			break;
		}
	}
	if (!next_line(buf, len, &pos, &line))
		return len > max_head ? HTTP_PARSE_TOO_LARGE : HTTP_PARSE_AGAIN;
	if (pos > max_head)
		return HTTP_PARSE_TOO_LARGE;
	if (has_control(line) || !parse_request_line(line, req, &minor))
		return HTTP_PARSE_BAD;
	for (;;) {
		const char *colon;
		struct span name, value;

		if (!next_line(buf, len, &pos, &line))
			return len > max_head ? HTTP_PARSE_TOO_LARGE
					      : HTTP_PARSE_AGAIN;
		if (pos > max_head)
			return HTTP_PARSE_TOO_LARGE;
		if (line.len == 0)
			break;
		if (has_control(line) || line.p[0] == ' ' || line.p[0] == '\t')
			return HTTP_PARSE_BAD; /* obs-fold is refused */
		colon = memchr(line.p, ':', line.len);
		if (colon == NULL || colon == line.p)
			return HTTP_PARSE_BAD;
		name = (struct span){line.p, (size_t)(colon - line.p)};
		for (size_t i = 0; i < name.len; i++)
			if (!is_tchar((unsigned char)name.p[i]))
				return HTTP_PARSE_BAD;
		value =
		    trim_ows((struct span){colon + 1, line.len - name.len - 1});
		if (span_is(name, "Content-Length")) {
			uint64_t n;
			if (!parse_content_length(value, &n) ||
			    (seen_length && n != req->content_length))
				return HTTP_PARSE_BAD;
			req->content_length = n;
			seen_length = true;
		} else if (span_is(name, "Transfer-Encoding")) {
			req->chunked = true;
		} else if (span_is(name, "Connection")) {
			parse_connection(value, &close, &keep_alive);
		}
	}
	req->keep_alive = minor == 1 ? !close : keep_alive && !close;
	req->head_len = pos;
	return HTTP_PARSE_OK;
}
