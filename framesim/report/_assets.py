"""The page's stylesheet and scripts, kept as strings so the report needs no package data files.

Scripts never put data into ``innerHTML``: every text from the run reaches the DOM through
``textContent`` / properties, so file names are always shown as text.
"""

from __future__ import annotations

CSS = r"""
:root{--bg:#f4f6f9;--card:#fff;--ink:#1c2430;--muted:#5d6878;--line:#e2e7ee;--accent:#3867d6;
--good:#22915a;--bad:#d64545;--thumb-bg:#151a22;
--font:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
*{box-sizing:border-box}
html{scroll-behavior:smooth;scroll-padding-top:52px}
body{margin:0;font:14px/1.5 var(--font);color:var(--ink);background:var(--bg)}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.errors{background:#fdecea;color:#8a1f17;border-bottom:2px solid var(--bad);padding:10px 32px;font-weight:600;
white-space:pre-wrap}
header.hero{background:linear-gradient(135deg,#1b2940 0%,#28446f 60%,#2f5c8f 100%);color:#fff;padding:26px 32px 24px}
.hero-in{max-width:1440px;margin:0 auto}
.brand{text-transform:uppercase;letter-spacing:.14em;font-size:11.5px;opacity:.75;font-weight:600}
.hero h1{margin:4px 0 6px;font-size:26px;font-weight:680;letter-spacing:-.01em}
.hero .sub{margin:0 0 18px;opacity:.9;display:flex;flex-wrap:wrap;gap:6px 18px}
.hero .sub span{overflow-wrap:anywhere}
.hero code{background:rgba(255,255,255,.13);padding:1px 6px;border-radius:4px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.stat{background:rgba(255,255,255,.10);border:1px solid rgba(255,255,255,.12);border-radius:10px;padding:9px 14px}
.stat .v{font-size:21px;font-weight:680;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.stat .k{font-size:11px;opacity:.8;text-transform:uppercase;letter-spacing:.07em}
.stat .d{font-size:12px;opacity:.78}
.bb-chips{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}
.bb-chip{display:flex;align-items:center;gap:8px;background:rgba(255,255,255,.94);color:var(--ink);border-radius:999px;
padding:4px 14px 4px 10px;font-size:13px}
.bb-chip .sw{margin:0}
.bb-chip span:last-child{color:var(--muted)}
nav.toc{position:sticky;top:0;z-index:20;background:rgba(255,255,255,.94);backdrop-filter:blur(6px);
border-bottom:1px solid var(--line)}
nav.toc .in{max-width:1440px;margin:0 auto;padding:9px 32px;display:flex;gap:6px 20px;flex-wrap:wrap}
nav.toc a{color:var(--muted);text-decoration:none;font-weight:600;font-size:13px}
nav.toc a:hover{color:var(--accent)}
main{max-width:1440px;margin:0 auto;padding:4px 24px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:14px;padding:20px 24px;margin:18px 0;
box-shadow:0 1px 2px rgba(20,30,50,.04)}
section h2{margin:0 0 4px;font-size:19px;letter-spacing:-.01em}
.howto{color:var(--muted);margin:0 0 12px;max-width:1040px}
.howto b{color:var(--ink);font-weight:600}
.method{font-size:13px;background:#f1f5fc;border-left:3px solid var(--accent);padding:8px 12px;border-radius:6px;
color:#2d3a52;margin:0 0 12px;max-width:1040px}
.notes{background:#fff8e6;border:1px solid #f3dfa6;color:#6b5312;border-radius:10px;padding:10px 14px;margin:18px 0 0}
.notes p{margin:2px 0}
.empty{color:var(--muted);font-style:italic;padding:18px 0}
.table-wrap{overflow-x:auto}
table.bb{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
table.bb th,table.bb td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
table.bb th:first-child,table.bb td:first-child{text-align:left}
table.bb th{font-size:12px;color:var(--muted);font-weight:650;
vertical-align:bottom;white-space:normal;max-width:120px;line-height:1.3}
table.bb tbody tr:hover{background:#f8fafc}
table.bb td.name{font-weight:650}
.sw{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:8px;vertical-align:-1px}
.weak{color:#a15c00;font-size:12px}
.chart{width:100%;min-height:200px}
.controls{display:flex;flex-wrap:wrap;gap:10px 16px;align-items:center;margin:0 0 12px}
.controls label{color:var(--muted);font-size:13px;display:flex;gap:6px;align-items:center}
.controls input[type=search],.controls select{font:inherit;padding:5px 10px;border:1px solid #cfd6e0;border-radius:8px;
background:#fff;color:var(--ink)}
.controls input[type=search]{min-width:240px}
.pager{display:flex;gap:8px;align-items:center;margin-left:auto;font-size:13px;color:var(--muted)}
.pager button{font:inherit;border:1px solid #cfd6e0;background:#fff;border-radius:8px;padding:4px 12px;cursor:pointer;
color:var(--ink)}
.pager button:disabled{opacity:.4;cursor:default}
.pager.bottom{justify-content:flex-end;margin-top:8px}
.keys{display:flex;gap:8px 18px;flex-wrap:wrap;font-size:12.5px;color:var(--muted);margin:0 0 14px}
.keys span{display:inline-flex;align-items:center;gap:6px}
.chip{display:inline-flex;align-items:center;gap:6px;font-weight:600;color:var(--ink)}
article.ex{border:1px solid var(--line);border-radius:12px;padding:14px 16px;margin:0 0 14px;background:#fff}
.ex-head{display:flex;gap:8px 12px;align-items:center;flex-wrap:wrap;margin:0 0 10px}
.ex-name{font-size:15px;margin:0;font-weight:680;overflow-wrap:anywhere}
.badge{font-size:12px;padding:2px 9px;border-radius:999px;background:#eef2f7;color:var(--muted);white-space:nowrap}
.badge.agree{background:#e2f3e9;color:#17703f}
.badge.disagree{background:#fdecea;color:#a8352a}
.badge.match{background:#e8effc;color:#2a4f9e}
.badge.nomatch{background:#fff3dc;color:#8a5a00}
.ex-body{display:grid;grid-template-columns:180px minmax(0,1fr);gap:18px}
.ex-img{margin:0}
.ex-img .frame{border-radius:8px;overflow:hidden;background:var(--thumb-bg);display:flex;align-items:center;
justify-content:center;min-height:120px}
.ex-img img{max-width:100%;display:block}
.ex-img figcaption{font-size:12px;color:var(--muted);margin-top:4px}
.ex-cols{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:16px}
.bb-col{border-top:3px solid var(--c);padding-top:6px;min-width:0}
.bb-title{font-weight:680;font-size:13px;margin-bottom:6px;display:flex;gap:8px;align-items:baseline}
.bb-title .sw{margin:0}
.bb-title .th{font-weight:500;color:var(--muted);font-size:12px}
.thumbs{--k:5;display:grid;gap:10px 8px;
grid-template-columns:repeat(auto-fill,minmax(max(92px,calc((100% - (var(--k) - 1)*8px)/var(--k))),1fr))}
.tile{font-size:12px;line-height:1.35;min-width:0}
.tile .im{position:relative;aspect-ratio:4/3;background:var(--thumb-bg);border-radius:6px;overflow:hidden;
display:flex;align-items:center;justify-content:center}
.tile .im img{width:100%;height:100%;object-fit:contain;display:block}
.tile.shared .im{box-shadow:0 0 0 2px #1c2430}
.tile.below .im img{opacity:.5;filter:grayscale(.5)}
.tile.below .score{color:var(--muted);font-weight:500}
.rank{position:absolute;top:4px;left:4px;background:rgba(0,0,0,.66);color:#fff;border-radius:4px;padding:0 5px;
font-size:11px;font-weight:600}
.gt{position:absolute;top:4px;right:4px;border-radius:4px;padding:0 5px;font-size:11px;font-weight:700;color:#fff}
.gt.ok{background:var(--good)}
.gt.no{background:var(--bad)}
.dots{position:absolute;bottom:4px;right:4px;display:flex;gap:3px;background:rgba(255,255,255,.92);padding:2px 4px;
border-radius:8px}
.dot{width:9px;height:9px;border-radius:50%;background:var(--c);display:inline-block}
.tile .meta{display:flex;flex-wrap:wrap;justify-content:space-between;column-gap:6px;margin-top:3px}
.score{font-weight:700;font-variant-numeric:tabular-nums}
.ts{color:var(--muted);font-variant-numeric:tabular-nums}
.vid{color:var(--muted);overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.ph{display:flex;align-items:center;justify-content:center;width:100%;height:100%;min-height:90px;color:#7b8595;
font-size:11px;text-align:center;padding:6px;background:repeating-linear-gradient(45deg,#eef1f5 0 8px,#e5e9ef 8px 16px)}
.none{color:var(--muted);font-size:12.5px;font-style:italic;padding:8px 0}
details.more{margin-top:8px;font-size:12px}
details.more summary{cursor:pointer;color:var(--accent)}
details.more table{border-collapse:collapse;margin-top:4px;font-variant-numeric:tabular-nums}
details.more td{padding:2px 8px 2px 0;color:var(--muted);white-space:nowrap}
ul.failed{margin:0;padding-left:18px}
ul.failed li{margin:2px 0;overflow-wrap:anywhere}
footer{max-width:1440px;margin:0 auto;padding:0 32px 32px;color:var(--muted);font-size:12px}
@media (max-width:960px){.ex-body{grid-template-columns:1fr}.ex-img{max-width:260px}
.ex-cols{grid-template-columns:1fr}header.hero{padding:20px}main{padding:4px 10px 30px}section{padding:16px}
.pager{margin-left:0}}
"""

#: first script in <head>: collects script errors (and CSP violations) into a visible banner, so a
#: broken page says so — and a headless browser test can read them back from the DOM.
ERROR_HOOK_JS = r"""(function(){'use strict';
var errs=[];window.__framesimErrors=errs;
function show(){var b=document.getElementById('fs-errors');if(!b||!errs.length)return;b.hidden=false;
b.textContent='This report hit a script error, so parts of it may be missing:\n'+errs.join('\n');}
function add(m){errs.push(String(m));show();}
window.addEventListener('error',function(e){add((e.message||'error')+(e.filename?' ('+e.filename.slice(-60)+':'+
e.lineno+')':''));});
window.addEventListener('unhandledrejection',function(e){var r=e.reason;add('Unhandled rejection: '+
(r&&r.message?r.message:r));});
document.addEventListener('securitypolicyviolation',function(e){add('Blocked by the page policy: '+
e.violatedDirective+' '+(e.blockedURI||''));});
var ce=console.error;console.error=function(){add(Array.prototype.map.call(arguments,String).join(' '));
return ce.apply(console,arguments);};
document.addEventListener('DOMContentLoaded',show);})();"""

APP_JS = r"""(function(){'use strict';
function $(id){return document.getElementById(id);}
function readJSON(id){var e=$(id);return e?JSON.parse(e.textContent):null;}
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;
if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
var D=readJSON('fs-data')||{backbones:[],examples:[],frames:{}};
var TH=readJSON('fs-thumbs')||{};
var FIGS=readJSON('fs-figures')||{};
var TL=readJSON('fs-timelines')||[];
var TEMPLATE=FIGS.template||null;
var CONFIG={responsive:true,displaylogo:false,modeBarButtonsToRemove:['select2d','lasso2d','autoScale2d']};
var BB=D.backbones;

function plot(target,fig,react){if(!target||!fig||typeof Plotly==='undefined')return;
var layout=fig.layout||{};if(TEMPLATE&&!layout.template)layout.template=TEMPLATE;
(react?Plotly.react:Plotly.newPlot)(target,fig.data||[],layout,CONFIG);}
['scores','agreement','pr','edits'].forEach(function(k){if(FIGS[k])plot($('fig-'+k),FIGS[k]);});

var sel=$('tl-select'),tl=$('fig-timeline');
if(sel&&tl&&TL.length){TL.forEach(function(v,i){var o=el('option',null,v.label);o.value=String(i);sel.appendChild(o);});
sel.addEventListener('change',function(){plot(tl,TL[+sel.value].fig,true);});plot(tl,TL[0].fig);}

function base(p){var s=String(p);var i=Math.max(s.lastIndexOf('/'),s.lastIndexOf('\\'));return s.slice(i+1)||s;}
function fmt(x){return (typeof x==='number'&&isFinite(x))?x.toFixed(3):'—';}
function popcount(m){var n=0;while(m){n+=m&1;m>>>=1;}return n;}
function img(b64,alt){var i=el('img');i.alt=alt;i.decoding='async';i.loading='lazy';
i.src='data:image/jpeg;base64,'+b64;return i;}

function tile(bi,r){var fk=r[0],score=r[1],rank=r[2],mask=r[3],corr=r[4];
var f=D.frames[fk]||['?','—',null];var b=BB[bi];
var t=el('div','tile');var below=(b.threshold!==null&&score<b.threshold);if(below)t.classList.add('below');
var shared=popcount(mask)>1;if(shared)t.classList.add('shared');
var im=el('div','im');var b64=TH['f'+fk];
if(b64)im.appendChild(img(b64,'frame '+(f[2]===null?'':f[2])+' of '+f[0]));
else im.appendChild(el('div','ph','frame image not available'));
im.appendChild(el('span','rank','#'+rank));
if(corr===1)im.appendChild(el('span','gt ok','✓'));else if(corr===0)im.appendChild(el('span','gt no','✗'));
if(shared){var ds=el('span','dots');var who=[];
BB.forEach(function(o,j){if(mask&(1<<j)){var d=el('span','dot');d.style.setProperty('--c',o.color);ds.appendChild(d);
who.push(o.name);}});ds.title='same frame found by: '+who.join(', ');im.appendChild(ds);}
t.appendChild(im);
var meta=el('div','meta');meta.appendChild(el('span','score',fmt(score)));meta.appendChild(el('span','ts',f[1]));
t.appendChild(meta);t.appendChild(el('div','vid',base(f[0])));
t.title=f[0]+'\n'+f[1]+(f[2]===null?'':' · frame '+f[2])+'\nrank '+rank+' · score '+
(typeof score==='number'?score.toFixed(4):'—')+(below?'\nbelow this backbone\u2019s threshold':'')+
(shared?'\nalso found by another backbone':'');
return t;}

function moreTable(rows){var d=el('details','more');d.appendChild(el('summary',null,'ranks '+rows[0][2]+'–'+
rows[rows.length-1][2]+' ('+rows.length+' more, no thumbnails)'));var tb=el('table');
rows.forEach(function(r){var f=D.frames[r[0]]||['?','—',null];var tr=el('tr');
[ '#'+r[2],fmt(r[1]),f[1],f[0]].forEach(function(v){tr.appendChild(el('td',null,v));});tb.appendChild(tr);});
d.appendChild(tb);return d;}

function card(x){var a=el('article','ex');var h=el('div','ex-head');h.appendChild(el('h3','ex-name',x.n));
if(x.k>1){var agree=x.a===x.k;h.appendChild(el('span','badge '+(agree?'agree':'disagree'),
agree?'same top-1 frame for '+(x.k===2?'both':'all '+x.k)+' backbones':
'top-1 frame: '+x.a+' of '+x.k+' backbones agree'));}
var over=0,withTh=0;BB.forEach(function(b,bi){var r=(x.r[bi]||[])[0];if(r&&b.threshold!==null){withTh++;
if(r[1]>=b.threshold)over++;}});
if(withTh&&!over)h.appendChild(el('span','badge nomatch','best '+fmt(x.b)+
' · below every threshold: probably not in the videos'));
else if(withTh)h.appendChild(el('span','badge match','best '+fmt(x.b)+' · above threshold for '+over+' of '+withTh));
else h.appendChild(el('span','badge','best score '+fmt(x.b)));a.appendChild(h);
var body=el('div','ex-body');var fig=el('figure','ex-img');var fr=el('div','frame');
var eb=TH['e'+x.i];if(eb)fr.appendChild(img(eb,'example image'));
else fr.appendChild(el('div','ph','example image not available'));
fig.appendChild(fr);fig.appendChild(el('figcaption',null,'example'));body.appendChild(fig);
var cols=el('div','ex-cols');cols.style.setProperty('--n',String(Math.max(1,BB.length)));
BB.forEach(function(b,bi){var c=el('div','bb-col');c.style.setProperty('--c',b.color);var tt=el('div','bb-title');
var sw=el('span','sw');sw.style.background=b.color;tt.appendChild(sw);tt.appendChild(el('span',null,b.name));
if(b.threshold!==null)tt.appendChild(el('span','th','threshold '+fmt(b.threshold)));c.appendChild(tt);
var rows=x.r[bi]||[];if(!rows.length){c.appendChild(el('div','none','no frame returned'));}
else{var g=el('div','thumbs');g.style.setProperty('--k',String(Math.min(5,D.thumbs,rows.length)));
rows.slice(0,D.thumbs).forEach(function(r){g.appendChild(tile(bi,r));});
c.appendChild(g);if(rows.length>D.thumbs)c.appendChild(moreTable(rows.slice(D.thumbs)));}
cols.appendChild(c);});
body.appendChild(cols);a.appendChild(body);return a;}

var list=$('ex-list');
if(list){var q=$('ex-q'),so=$('ex-sort'),dis=$('ex-dis'),ps=$('ex-ps'),page=0;
var pagers=[].slice.call(document.querySelectorAll('.pager'));
function videosOf(x){var s=[];x.r.forEach(function(rows){rows.forEach(function(r){var f=D.frames[r[0]];
if(f)s.push(f[0]);});});
return s.join('\n').toLowerCase();}
D.examples.forEach(function(x,i){x.o=i;x.s=(x.n+'\n'+videosOf(x)).toLowerCase();});
function current(){var needle=(q&&q.value||'').trim().toLowerCase();var only=dis&&dis.checked;
var xs=D.examples.filter(function(x){return (!needle||x.s.indexOf(needle)>=0)&&(!only||(x.k>1&&x.a<x.k));});
var m=so?so.value:'run';var nb=function(v){return v===null?-Infinity:v;};
if(m==='best')xs.sort(function(a,b){return nb(b.b)-nb(a.b)||a.o-b.o;});
else if(m==='worst')xs.sort(function(a,b){return nb(a.b)-nb(b.b)||a.o-b.o;});
else if(m==='disagree')xs.sort(function(a,b){return (a.a/Math.max(1,a.k))-(b.a/Math.max(1,b.k))||a.o-b.o;});
else if(m==='name')xs.sort(function(a,b){return a.n<b.n?-1:a.n>b.n?1:0;});
return xs;}
function render(){var xs=current();var size=+(ps&&ps.value||D.pageSize)||20;
var pages=Math.max(1,Math.ceil(xs.length/size));
page=Math.min(Math.max(0,page),pages-1);var frag=document.createDocumentFragment();
xs.slice(page*size,(page+1)*size).forEach(function(x){frag.appendChild(card(x));});
if(!xs.length)frag.appendChild(el('div','empty',
D.examples.length?'No example matches this filter.':'No examples in this run.'));
list.replaceChildren(frag);
pagers.forEach(function(p){p.querySelector('.info').textContent='page '+(page+1)+' of '+pages+' · '+xs.length+
' example'+(xs.length===1?'':'s');p.querySelector('.prev').disabled=page<=0;
p.querySelector('.next').disabled=page>=pages-1;});}
function go(p,d){page+=d;render();if(p.classList.contains('bottom'))list.scrollIntoView();}
pagers.forEach(function(p){p.querySelector('.prev').addEventListener('click',function(){go(p,-1);});
p.querySelector('.next').addEventListener('click',function(){go(p,1);});});
[q,so,dis,ps].forEach(function(c){if(c)c.addEventListener(c===q?'input':'change',function(){page=0;render();});});
render();}
document.body.setAttribute('data-ready','1');})();"""
