/* The API reference: /openapi.json rendered as plain HTML (Swagger UI would need a CDN). All text goes in
   with textContent. */
'use strict';

function el(tag, text, cls) {
  var node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function typeOf(schema) {
  if (!schema) return '';
  if (schema.type === 'array') return 'array of ' + typeOf(schema.items);
  var out = schema.format === 'binary' ? 'file' : (schema.type || '');
  if (schema.minimum !== undefined || schema.maximum !== undefined) {
    out += ' (' + (schema.minimum !== undefined ? schema.minimum : '') + '..' +
      (schema.maximum !== undefined ? schema.maximum : '') + ')';
  }
  if (schema.default !== undefined) out += ', default ' + schema.default;
  return out;
}

function paramTable(rows) {
  var table = el('table');
  var head = el('tr');
  ['name', 'in', 'type', 'meaning'].forEach(function (h) { head.appendChild(el('th', h)); });
  table.appendChild(head);
  rows.forEach(function (r) {
    var tr = el('tr');
    var name = el('td');
    name.appendChild(el('code', r.name + (r.required ? ' *' : '')));
    tr.appendChild(name);
    tr.appendChild(el('td', r.where));
    tr.appendChild(el('td', typeOf(r.schema)));
    tr.appendChild(el('td', r.description || ''));
    table.appendChild(tr);
  });
  return table;
}

function render(spec) {
  var box = document.getElementById('docs-routes');
  Object.keys(spec.paths || {}).sort().forEach(function (path) {
    var methods = spec.paths[path];
    Object.keys(methods).forEach(function (method) {
      var op = methods[method];
      var card = el('section', null, 'route');
      var h = el('h2');
      h.appendChild(el('span', method.toUpperCase(), 'method'));
      h.appendChild(document.createTextNode(' ' + path));
      card.appendChild(h);
      if (op.description || op.summary) card.appendChild(el('p', op.description || op.summary));
      var rows = (op.parameters || []).map(function (p) {
        return { name: p.name, where: p['in'], schema: p.schema, description: p.description, required: p.required };
      });
      var body = op.requestBody && op.requestBody.content;
      if (body) {
        Object.keys(body).forEach(function (ctype) {
          var schema = body[ctype].schema || {};
          var required = schema.required || [];
          Object.keys(schema.properties || {}).forEach(function (name) {
            var prop = schema.properties[name];
            rows.push({ name: name, where: ctype, schema: prop, description: prop.description,
                        required: required.indexOf(name) >= 0 });
          });
        });
      }
      if (rows.length) card.appendChild(paramTable(rows));
      var codes = Object.keys(op.responses || {}).filter(function (c) { return c !== '200'; });
      if (codes.length) card.appendChild(el('p', 'Errors: ' + codes.join(', ') + ' ({"error": "..."})'));
      box.appendChild(card);
    });
  });
}

document.addEventListener('DOMContentLoaded', function () {
  var status = document.getElementById('docs-status');
  fetch('/openapi.json', { credentials: 'same-origin' })
    .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
    .then(function (spec) {
      status.textContent = (spec.info && spec.info.title || 'API') + ' ' + (spec.info && spec.info.version || '') +
        ': ' + (spec.info && spec.info.description || '');
      render(spec);
    })
    .catch(function (err) { status.textContent = 'Cannot load /openapi.json: ' + err.message; });
});
